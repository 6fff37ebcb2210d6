"""The classifier: a MobileNetV3Small backbone (from scratch) and one of two heads over its feature map.

Input: ``(batch, S, S)`` uint8 preprocessed slices (see ``model.preprocessing``). Output: softmax over the four
classes of ``model.labels.CLASS_NAMES``. Heads: ``use_lstm=True`` reads the feature-map rows as a sequence with an
LSTM; ``use_lstm=False`` (the default) pools them globally. The default follows the measured ablation in the
shipped model's card: trained alike, the pooling head matched or beat the LSTM at every epoch from the third on.
Built with ``tf_keras`` (the Keras 2 API): Keras 3 models fail under ``MultiWorkerMirroredStrategy`` in Ray Train.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from model.labels import CLASS_NAMES


@dataclasses.dataclass(frozen=True)
class ArchitectureConfig:
    """Everything that decides the shape of the network; saved with every model."""

    image_size: int = 160
    use_lstm: bool = False
    lstm_units: int = 128
    row_channels: int = 128
    dropout: float = 0.3
    batchnorm_momentum: float = 0.9

    @property
    def head(self) -> str:
        return "lstm" if self.use_lstm else "pooling"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ArchitectureConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def mobilenet_backbone(config: ArchitectureConfig) -> keras.Model:
    """MobileNetV3Small without top or weights, its BatchNormalization momentum lowered for from-scratch training."""
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(config.image_size, config.image_size, 1), include_top=False, weights=None,
        include_preprocessing=False)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.batchnorm_momentum
    return backbone


def lstm_head(features: tf.Tensor, config: ArchitectureConfig) -> tf.Tensor:
    """A 1x1 convolution narrows the channels, then an LSTM reads the feature-map rows top to bottom."""
    narrowed = keras.layers.Conv2D(config.row_channels, 1, activation="relu", name="row_projection")(features)
    rows, cols = narrowed.shape[1], narrowed.shape[2]
    sequence = keras.layers.Reshape((rows, cols * config.row_channels), name="rows_as_sequence")(narrowed)
    return keras.layers.LSTM(config.lstm_units, name="row_lstm")(sequence)


def build_classifier(config: ArchitectureConfig) -> keras.Model:
    """The uncompiled classifier."""
    side = config.image_size
    images = keras.Input((side, side), dtype="uint8", name="image")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(images)
    channels = keras.layers.Reshape((side, side, 1), name="add_channel")(scaled)
    features = mobilenet_backbone(config)(channels)
    if config.use_lstm:
        pooled = lstm_head(features, config)
    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="average_pool")(features)
    dropped = keras.layers.Dropout(config.dropout)(pooled)
    probabilities = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="class_probabilities")(dropped)
    name = "mobilenetv3small_lstm" if config.use_lstm else "mobilenetv3small_gap"
    return keras.Model(images, probabilities, name=name)


def masked_crossentropy(target_masks: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """``-log(sum(mask * p))``: cross-entropy for one-hot masks, tumor-vs-no-tumor for unknown-type tumors."""
    covered = tf.reduce_sum(tf.cast(target_masks, probabilities.dtype) * probabilities, axis=-1)
    return -tf.math.log(tf.clip_by_value(covered, 1e-7, 1.0))


def compile_classifier(model: keras.Model, learning_rate: float, decay_steps: int = 0) -> keras.Model:
    """Adam with the masked loss; with ``decay_steps`` the learning rate follows a cosine decay to 5%."""
    schedule = (keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.05)
                if decay_steps > 0 else learning_rate)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=masked_crossentropy)
    return model
