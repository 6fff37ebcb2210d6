"""One image, one answer: an image's probabilities, unfamiliarity score and flag do not depend on the batch it is
scored in, on the batch size, or on its neighbours, on every backend (through the real inference stage)."""

import numpy as np
import pyarrow as pa
import pytest

from model import registry
from model.backends import BACKENDS
from pipeline import schema as col
from pipeline.scoring.stages import InferenceActor
from tests.conftest import ROOT
from tests.model.test_onnx import sample_batch

MODEL = ROOT / "models" / "mri-bilstm-v2"
DECISIONS = (col.FLAGGED, col.OOD, col.PREDICTED_CLASS)


def answers(table: pa.Table) -> dict[str, np.ndarray]:
    numbers = {name: np.array(table[name].to_pylist(), dtype=np.float64)
               for name in (*col.PROBABILITY_COLUMNS, col.TUMOR_PROBABILITY, col.OOD_SCORE)}
    return {**numbers, **{name: np.array(table[name].to_pylist(), dtype=object) for name in DECISIONS}}


def with_other_images(table: pa.Table, size: int) -> pa.Table:
    """``table``'s rows with their images mirrored and inverted: other neighbours, same schema."""
    images = [np.frombuffer(image, np.uint8).reshape(size, size) for image in table[col.IMAGE].to_pylist()]
    others = pa.array([np.ascontiguousarray(255 - image[:, ::-1]).tobytes() for image in images], pa.binary())
    return table.set_column(table.schema.get_field_index(col.IMAGE), col.IMAGE, others)


def assert_same(expected: dict, got: dict) -> None:
    for name in (*col.PROBABILITY_COLUMNS, col.TUMOR_PROBABILITY):
        assert np.abs(got[name] - expected[name]).max() <= 1e-5, name
    assert np.abs(got[col.OOD_SCORE] - expected[col.OOD_SCORE]).max() <= 1e-4 * np.abs(expected[col.OOD_SCORE]).max()
    for name in DECISIONS:
        assert got[name].tolist() == expected[name].tolist(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_images_answer_does_not_depend_on_its_batch_or_its_neighbours(backend):
    info = registry.load_model_info(str(MODEL))
    batch = sample_batch(info)
    size = info.preprocessing.image_size
    whole = InferenceActor(info.uri, info.weights_sha256, info.threshold, 1, False, batch_size=64, backend=backend)
    expected = answers(whole(batch))

    alone = [answers(whole(batch.slice(row, 1))) for row in range(batch.num_rows)]
    assert_same(expected, {name: np.concatenate([one[name] for one in alone]) for name in expected})

    small = InferenceActor(info.uri, info.weights_sha256, info.threshold, 1, False, batch_size=4, backend=backend)
    order = np.random.default_rng(0).permutation(batch.num_rows)
    shuffled = answers(small(batch.take(pa.array(order))))
    assert_same(expected, {name: values[np.argsort(order)] for name, values in shuffled.items()})

    among_others = answers(whole(pa.concat_tables([with_other_images(batch, size), batch,
                                                   with_other_images(batch, size)])))
    assert_same(expected, {name: values[batch.num_rows:2 * batch.num_rows] for name, values in among_others.items()})
