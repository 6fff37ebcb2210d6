"""The classifier: a MobileNetV3Small backbone (from scratch) and one of three heads over its feature maps.

Input: ``(batch, S, S)`` uint8 preprocessed slices (see ``model.preprocessing``). Output: softmax over the four
classes of ``model.labels.CLASS_NAMES``. Heads (``ArchitectureConfig.head``):

- ``bilstm`` (the default, the design's CNN+LSTM): a bidirectional LSTM reads the columns of the backbone's
  stride-16 feature map (10x10 at 160 px) left to right and right to left, so it can compare the two hemispheres,
  whose asymmetry a tumor breaks; its summary is concatenated with the globally pooled final feature map, so the
  sequence model adds to what pooling gives instead of replacing it.
- ``pooling``: global average pooling of the final feature map.
- ``lstm``: an LSTM over the rows of the final feature map, alone (the first CNN+LSTM, kept to load its weights).

A model may be an ensemble (``ArchitectureConfig.members``, ``mirror_views``): several such networks, trained apart
with their own seeds, each reading the slice and, with ``mirror_views``, its left-right mirror; the graph averages
their probabilities. Every backend (TensorFlow, ONNX, int8) runs that one graph, so the calibration, the operating
point and the out-of-distribution threshold are fitted on what scoring computes. A single network keeps the layout
it always had, so older weights load as they are.

Built with ``tf_keras`` (the Keras 2 API): Keras 3 models fail under ``MultiWorkerMirroredStrategy`` in Ray Train.
"""

from __future__ import annotations

from model.tensorflow_runtime import keras, tf

from model.config import ArchitectureConfig
from model.labels import CLASS_NAMES

TUMOR_MAP_OUTPUT = "tumor_map"  # the training-only second output of build_tumor_map_trainer
COLUMN_FEATURES_LAYER = "expanded_conv_7/Add"  # the last stride-16 block of MobileNetV3Small (10x10x48 at 160 px)
# early backbone blocks (stride 8 and 16) whose per-channel mean and spread the out-of-distribution score reads
STATISTICS_LAYERS = ("expanded_conv_2/Add", "expanded_conv_4/Add")


def mobilenet_backbone(config: ArchitectureConfig, image_size: int) -> keras.Model:
    """MobileNetV3Small without top or weights, its BatchNormalization momentum lowered for from-scratch training.

    Outputs the stride-16 feature map (for the column LSTM) and the final stride-32 one."""
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 1), include_top=False, weights=None,
        include_preprocessing=False)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.batchnorm_momentum
    if config.head != "bilstm":
        return backbone
    finer = backbone.get_layer(COLUMN_FEATURES_LAYER).output
    return keras.Model(backbone.input, [finer, backbone.output], name=backbone.name)


def column_bilstm_head(finer: tf.Tensor, final: tf.Tensor, config: ArchitectureConfig) -> tf.Tensor:
    """Pooled final features beside a bidirectional LSTM's reading of the finer map's columns, left to right."""
    narrowed = keras.layers.Conv2D(config.column_channels, 1, activation="relu", name="column_projection")(finer)
    columns = keras.layers.Permute((2, 1, 3), name="columns_first")(narrowed)
    width, height = columns.shape[1], columns.shape[2]
    sequence = keras.layers.Reshape((width, height * config.column_channels), name="columns_as_sequence")(columns)
    summary = keras.layers.Bidirectional(keras.layers.LSTM(config.lstm_units // 2), name="column_bilstm")(sequence)
    pooled = keras.layers.GlobalAveragePooling2D(name="average_pool")(final)
    return keras.layers.Concatenate(name="pooled_and_columns")([pooled, summary])


def lstm_head(features: tf.Tensor, config: ArchitectureConfig) -> tf.Tensor:
    """A 1x1 convolution narrows the channels, then an LSTM reads the feature-map rows top to bottom."""
    narrowed = keras.layers.Conv2D(config.row_channels, 1, activation="relu", name="row_projection")(features)
    rows, cols = narrowed.shape[1], narrowed.shape[2]
    sequence = keras.layers.Reshape((rows, cols * config.row_channels), name="rows_as_sequence")(narrowed)
    return keras.layers.LSTM(config.lstm_units, name="row_lstm")(sequence)


NETWORK_NAMES = {"bilstm": "mobilenetv3small_column_bilstm", "lstm": "mobilenetv3small_lstm",
                 "pooling": "mobilenetv3small_gap"}


def network_probabilities(channels: tf.Tensor, config: ArchitectureConfig, side: int) -> tf.Tensor:
    """Backbone, head, dropout and softmax on ``(side, side, 1)`` scaled slices: the trained part of a network."""
    return network_outputs(channels, config, side)[0]


def network_outputs(channels: tf.Tensor, config: ArchitectureConfig, side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(class probabilities, the backbone's stride-16 feature map for the bilstm head, else its final map)."""
    features = mobilenet_backbone(config, side)(channels)
    if config.head == "bilstm":
        pooled, finer = column_bilstm_head(*features, config), features[0]
    elif config.head == "lstm":
        pooled, finer = lstm_head(features, config), features
    else:
        pooled, finer = keras.layers.GlobalAveragePooling2D(name="average_pool")(features), features
    dropped = keras.layers.Dropout(config.dropout)(pooled)
    return keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="class_probabilities")(dropped), finer


def scaled_channels(side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The uint8 image input and the same slices scaled to [-1, 1] with a channel axis."""
    images = keras.Input((side, side), dtype="uint8", name="image")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(images)
    return images, keras.layers.Reshape((side, side, 1), name="add_channel")(scaled)


def build_classifier(config: ArchitectureConfig, image_size: int) -> keras.Model:
    """The uncompiled classifier for ``(image_size, image_size)`` inputs (``PreprocessConfig.image_size``): one
    network, or the averaging graph of an ensemble (``build_ensemble``)."""
    if config.is_ensemble:
        return build_ensemble(config, image_size)
    images, channels = scaled_channels(image_size)
    return keras.Model(images, network_probabilities(channels, config, image_size), name=NETWORK_NAMES[config.head])


def build_tumor_map_trainer(config: ArchitectureConfig, image_size: int) -> tuple[keras.Model, keras.Model]:
    """(trainer, classifier) for training with tumor maps (``TrainConfig.tumor_map_weight``): ``classifier`` is the
    network of ``build_classifier`` (the same layers, so the same weights in the same order), and ``trainer``
    shares its layers and adds a second output, the tumor map: a 1x1 convolution's sigmoid on each cell of the
    stride-16 feature map the column LSTM reads, trained to the share of the cell that the tumor covers. The map
    only teaches the backbone where tumors are; what is kept, exported and scored is ``classifier``."""
    if config.is_ensemble or config.head != "bilstm":
        raise ValueError("tumor maps are trained for one network with the bilstm head (members train one by one)")
    images, channels = scaled_channels(image_size)
    probabilities, finer = network_outputs(channels, config, image_size)
    classifier = keras.Model(images, probabilities, name=NETWORK_NAMES[config.head])
    tumor_map = keras.layers.Conv2D(1, 1, activation="sigmoid", name=TUMOR_MAP_OUTPUT)(finer)
    return keras.Model(images, [probabilities, tumor_map], name=f"{classifier.name}_with_tumor_map"), classifier


def tumor_map_crossentropy(known_maps: tf.Tensor, predicted: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy of the predicted tumor map against ``known_maps`` (``(..., 2)``: the share of each cell
    the tumor covers, and 1 where the image's map is known, else 0), averaged over the cells: nothing for an image
    whose map is unknown (a tumor without a mask)."""
    share, known = known_maps[..., :1], known_maps[..., 1:]
    predicted = tf.clip_by_value(tf.cast(predicted, share.dtype), 1e-7, 1.0 - 1e-7)
    crossentropy = -(share * tf.math.log(predicted) + (1.0 - share) * tf.math.log(1.0 - predicted))
    return tf.reduce_mean(crossentropy * known, axis=[1, 2, 3])


def build_member(config: ArchitectureConfig, side: int, index: int) -> keras.Model:
    """One member of an ensemble: a single network from its scaled channels on; its weights are, in order, those
    of ``build_classifier(config.member())`` (``load_members``)."""
    channels = keras.Input((side, side, 1), name=f"member_{index}_channels")
    return keras.Model(channels, network_probabilities(channels, config.member(), side), name=f"member_{index}")


def build_ensemble(config: ArchitectureConfig, side: int) -> keras.Model:
    """``config.members`` networks, each reading the slice and, with ``mirror_views``, its left-right mirror; the
    probabilities of every (member, view) averaged."""
    images, channels = scaled_channels(side)
    views = [channels]
    if config.mirror_views:
        views.append(keras.layers.Lambda(lambda maps: tf.reverse(maps, axis=[2]), name="left_right_mirror")(channels))
    members = [build_member(config, side, index) for index in range(config.members)]
    outputs = [member(view) for member in members for view in views]
    probabilities = keras.layers.Average(name="averaged_probabilities")(outputs)
    return keras.Model(images, probabilities, name=f"{NETWORK_NAMES[config.head]}_ensemble")


def members_of(model: keras.Model) -> list[keras.Model]:
    """The member networks of an ensemble graph, in order."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member_")]


def member_networks(model: keras.Model, config: ArchitectureConfig, side: int) -> list[keras.Model]:
    """Each network of ``model`` as a standalone classifier (uint8 slices in; ``[model]`` for a single network):
    what Grad-CAM explains."""
    if not config.is_ensemble:
        return [model]
    networks = []
    for member in members_of(model):
        network = build_classifier(config.member(), side)
        network.set_weights(member.get_weights())
        networks.append(network)
    return networks


def load_members(model: keras.Model, networks: list[keras.Model]) -> keras.Model:
    """Set the members of the ensemble graph ``model`` to the weights of the trained single ``networks``."""
    members = members_of(model)
    if len(members) != len(networks):
        raise ValueError(f"the ensemble has {len(members)} members, {len(networks)} networks were given")
    for member, network in zip(members, networks):
        member.set_weights(network.get_weights())
    return model


def backbone_of(model: keras.Model) -> keras.Model:
    """The MobileNetV3Small backbone of a network, or of an ensemble's first member."""
    nested = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    return backbone_of(nested) if nested.name.startswith("member_") else nested


def with_features(model: keras.Model) -> keras.Model:
    """The same network with two outputs: the class probabilities and the image statistics the out-of-distribution
    score reads (``model.ood``): the mean and standard deviation over the image of each channel of two early
    backbone blocks (``STATISTICS_LAYERS``). Early-layer statistics describe what an image is made of (texture,
    contrast, edges) rather than which class it looks like, so CT, radiographs, photographs and blank slices stand
    out there while unseen brain MRI does not (measured in the model card). An ensemble's are its first member's,
    on the slice as it is."""
    backbone = backbone_of(model)
    early = keras.Model(backbone.input, [backbone.get_layer(name).output for name in STATISTICS_LAYERS],
                        name="early_blocks")
    statistics = []
    for block in early(model.get_layer("add_channel").output):
        statistics.append(keras.layers.GlobalAveragePooling2D()(block))
        statistics.append(keras.layers.Lambda(lambda maps: tf.math.reduce_std(maps, axis=[1, 2]))(block))
    features = keras.layers.Concatenate(name="image_statistics")(statistics)
    return keras.Model(model.input, [model.output, features], name=f"{model.name}_with_features")


def masked_crossentropy(target_masks: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """``-log(sum(mask * p))``: cross-entropy for one-hot masks, tumor-vs-no-tumor for unknown-type tumors."""
    covered = tf.reduce_sum(tf.cast(target_masks, probabilities.dtype) * probabilities, axis=-1)
    return -tf.math.log(tf.clip_by_value(covered, 1e-7, 1.0))


def smoothed_masked_crossentropy(label_smoothing: float):
    """The masked loss with label smoothing: ``(1 - e) * masked loss + e * mean over classes of -log p``.

    For a one-hot mask this is cross-entropy against the smoothed target ``(1 - e) * onehot + e / classes``."""
    def loss(target_masks: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
        uniform = -tf.reduce_mean(tf.math.log(tf.clip_by_value(probabilities, 1e-7, 1.0)), axis=-1)
        return (1.0 - label_smoothing) * masked_crossentropy(target_masks, probabilities) + label_smoothing * uniform

    return loss


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int):
    """Linear warm-up to ``peak``, then cosine decay to 1% of it over exactly the planned remaining steps."""
    if total_steps <= 0:
        return peak
    warmup_steps = min(warmup_steps, total_steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak, max(1, total_steps - warmup_steps), alpha=0.01,
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)


def compile_classifier(model: keras.Model, learning_rate: float, total_steps: int = 0, warmup_steps: int = 0,
                       weight_decay: float = 0.0, label_smoothing: float = 0.0,
                       tumor_map_weight: float = 0.0) -> keras.Model:
    """AdamW (decoupled weight decay, none on BatchNormalization and biases) on the warm-up/cosine schedule, with
    the label-smoothed masked loss; for a ``build_tumor_map_trainer`` model, plus ``tumor_map_weight`` times the
    tumor map's loss."""
    optimizer = keras.optimizers.AdamW(learning_rate_schedule(learning_rate, total_steps, warmup_steps),
                                       weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["BatchNorm", "bias", "gamma", "beta"])
    loss = smoothed_masked_crossentropy(label_smoothing)
    if len(model.outputs) == 2:
        model.compile(optimizer=optimizer, loss=[loss, tumor_map_crossentropy], loss_weights=[1.0, tumor_map_weight])
    else:
        model.compile(optimizer=optimizer, loss=loss)
    return model
