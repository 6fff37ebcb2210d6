"""The scoring stages on real files and the real model, without Ray: batches keep their declared types whatever
their nulls, and a model failure turns a batch's images into error rows instead of losing them."""

import dataclasses
import threading
import time

import pyarrow as pa
import pytest

from model import registry
from model.preprocessing import PreprocessConfig
from pipeline import schema as col
from model.decode import DecodeLimits
from pipeline.scoring.stages import (IN_FLIGHT_SCHEMA, InferenceActor, StageContext, file_rows, rows_to_table,
                             to_predictions_table)
from tests.conftest import ROOT, SAMPLES


def context(image_size: int) -> StageContext:
    return StageContext("run", "2026-11-08", PreprocessConfig(image_size=image_size), DecodeLimits(),
                        b"k" * 32, 0.5, "model", "sha")


def batch(image_size: int, tmp_path) -> pa.Table:
    (tmp_path / "empty.dcm").write_bytes(b"")
    images = sorted((SAMPLES / "archive" / "loose").glob("*"))[:3]
    uris = [str(path) for path in images] + [str(tmp_path / "empty.dcm")]
    return rows_to_table([row for uri in uris for row in file_rows(uri, context(image_size))])


def test_an_all_error_batch_has_the_same_types_as_any_other(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"")
    errors = rows_to_table(file_rows(str(tmp_path / "a.dcm"), context(160)))
    assert errors.schema == IN_FLIGHT_SCHEMA == batch(160, tmp_path).schema
    assert errors[col.STATUS].to_pylist() == ["error"] and errors[col.PATIENT_KEY].null_count == 1


def actor_for(model_uri: str) -> InferenceActor:
    info = registry.load_model_info(model_uri)
    return InferenceActor(info.uri, info.weights_sha256, threshold=0.5, cpu_threads=1, use_gpu=False)


def test_scores_fill_only_the_ok_rows(model_uri, tmp_path):
    actor = actor_for(model_uri)
    size = registry.load_model_info(model_uri).preprocessing.image_size
    scored = to_predictions_table(actor(batch(size, tmp_path)), scored_at=None).to_pylist()
    assert [row["status"] for row in scored] == ["ok", "ok", "ok", "error"]
    assert all(row["predicted_class"] and 0 <= row["tumor_probability"] <= 1 for row in scored[:3])
    assert scored[3]["predicted_class"] is None and scored[3]["tumor_probability"] is None


def test_an_actor_refuses_weights_other_than_the_ones_the_run_resolved(model_uri):
    info = registry.load_model_info(model_uri)
    with pytest.raises(registry.ModelError, match="changed after the run started"):
        InferenceActor(info.uri, "0" * 64, threshold=0.5, cpu_threads=1, use_gpu=False)


def test_a_model_failure_marks_the_batch_as_error_rows_and_loses_none(model_uri, tmp_path):
    actor = actor_for(model_uri)
    mismatched = batch(96, tmp_path)  # preprocessed for another model: the real model cannot take them
    scored = to_predictions_table(actor(mismatched), scored_at=None).to_pylist()
    assert len(scored) == mismatched.num_rows
    assert [row["error_code"] for row in scored] == ["inference_failed"] * 3 + ["empty_file"]
    assert all(row["status"] == "error" and row["prob_glioma"] is None and row["flagged"] is None for row in scored)


def test_an_unreadable_file_names_its_path(tmp_path):
    missing = str(tmp_path / "exports" / "typo.dcm")
    [row] = file_rows(missing, context(160))
    assert row[col.ERROR_CODE] == "unreadable_file" and missing in row[col.ERROR_MESSAGE]


def concurrent_reads(monkeypatch) -> list[int]:
    """Spies on the real ``storage.read_bytes`` (each read held 50 ms, as a network would) and returns a list that
    ends up holding the most reads that were ever in flight at once."""
    from infra import storage

    real, lock, state = storage.read_bytes, threading.Lock(), {"now": 0}
    most = [0]

    def slow_read(uri, max_bytes=None):
        with lock:
            state["now"] += 1
            most[0] = max(most[0], state["now"])
        time.sleep(0.05)
        try:
            return real(uri, max_bytes)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(storage, "read_bytes", slow_read)
    return most


def test_a_batch_reads_ahead_in_order_within_its_file_and_byte_bounds(tmp_path, monkeypatch):
    from pipeline.scoring import stages

    paths = [tmp_path / f"{index}.bin" for index in range(9)]
    for index, path in enumerate(paths):
        path.write_bytes(bytes([index]) * 60)
    paths.insert(4, tmp_path / "gone.dcm")  # a missing file keeps its place, as its error row
    uris, sizes = [str(path) for path in paths], [60] * len(paths)
    monkeypatch.setattr(stages, "READ_AHEAD_FILES", 3)
    most = concurrent_reads(monkeypatch)
    sources = list(stages.read_ahead(uris, sizes, context(32)))
    contents = [bytes([index]) * 60 for index in range(9)]
    assert [source if isinstance(source, bytes) else source[col.ERROR_CODE] for source in sources] == [
        *contents[:4], "unreadable_file", *contents[4:]]
    assert most[0] == 3  # reads overlap, never more than READ_AHEAD_FILES at once
    monkeypatch.setattr(stages, "READ_AHEAD_BYTES", 100)  # two 60-byte files are over it: one at a time
    most[0] = 0
    assert list(stages.read_ahead(uris, sizes, context(32))) == sources and most[0] == 1


def test_a_manifest_line_naming_a_folder_is_walked(tmp_path):
    from pipeline.sources.listing import list_inputs

    folder = tmp_path / "series"
    (folder / "deeper").mkdir(parents=True)
    for name in ("a.dcm", "deeper/b.dcm"):
        (folder / name).write_bytes(b"x")
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# tonight\n{folder}\n{tmp_path / 'missing.dcm'}\n")
    assert list_inputs([], [str(manifest)]) == sorted([str(folder / "a.dcm"), str(folder / "deeper" / "b.dcm"),
                                                       str(tmp_path / "missing.dcm")])


def test_frames_of_a_multiframe_object_take_their_own_positions(tmp_path):
    """An enhanced (multi-frame) object stores each frame's position in its Per-frame Functional Groups; frames
    stored out of order along the slice normal get positions that put them back in order."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    source = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    heights = [20.0, 0.0, 10.0]  # stored order: top, bottom, middle
    frames = np.stack([source.pixel_array] * len(heights))
    source.NumberOfFrames, source.PixelData = len(heights), frames.tobytes()
    del source.ImagePositionPatient, source.ImageOrientationPatient
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    source.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for height in heights:
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, height]
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    source.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    path = tmp_path / "enhanced.dcm"
    source.save_as(path)
    keyed = dataclasses.replace(context(64), pseudonym_key=b"k" * 32)
    rows = file_rows(str(path), keyed)
    assert [row[col.STATUS] for row in rows] == ["ok"] * 3
    assert [row[col.SLICE_POSITION] for row in rows] == heights


def mirrored_batch(table: pa.Table, side: int) -> pa.Table:
    """The batch with each image replaced by its left-right mirror (missing images stay missing)."""
    import numpy as np

    return table.set_column(table.schema.get_field_index(col.IMAGE), col.IMAGE, pa.array(
        [None if image is None else np.frombuffer(image, np.uint8).reshape(side, side)[:, ::-1].tobytes()
         for image in table[col.IMAGE].to_pylist()], pa.binary()))


def probabilities(scored: pa.Table):
    """The class-probability columns of a scored batch, one row per class."""
    import numpy as np

    return np.array([scored[name].to_pylist() for name in col.PROBABILITY_COLUMNS], dtype=np.float64)


def test_mirror_average_is_the_mean_of_the_image_and_its_mirror(tmp_path):
    """On a single network (the shipped ensemble averages the mirror in its own graph, where the option adds
    nothing: the last test)."""
    import numpy as np

    info = registry.load_model_info(str(ROOT / "models" / "mri-bilstm-v2"))
    plain = InferenceActor(info.uri, info.weights_sha256, threshold=0.5, cpu_threads=1, use_gpu=False, backend="onnx")
    averaged = InferenceActor(info.uri, info.weights_sha256, threshold=0.5, cpu_threads=1, use_gpu=False,
                              backend="onnx", mirror_average=True)
    table = batch(info.preprocessing.image_size, tmp_path)
    mirrored = mirrored_batch(table, info.preprocessing.image_size)
    expected = (probabilities(plain(table)) + probabilities(plain(mirrored))) / 2
    result = averaged(table)
    assert np.allclose(probabilities(result)[:, :3], expected[:, :3], atol=1e-6)
    assert not np.allclose(probabilities(result)[:, :3], probabilities(plain(table))[:, :3], atol=1e-4)
    assert result[col.STATUS].to_pylist() == ["ok", "ok", "ok", "error"]
    assert result[col.OOD_SCORE].to_pylist() == plain(table)[col.OOD_SCORE].to_pylist()


def test_the_shipped_ensemble_scores_a_slice_and_its_mirror_alike(model_uri, tmp_path):
    """Its graph averages every member over the slice and its mirror, so mirroring the input changes nothing."""
    import numpy as np

    info = registry.load_model_info(model_uri)
    assert info.architecture.mirror_views
    actor = InferenceActor(info.uri, info.weights_sha256, threshold=0.5, cpu_threads=1, use_gpu=False, backend="onnx")
    table = batch(info.preprocessing.image_size, tmp_path)
    scored = [probabilities(result)[:, :3]
              for result in (actor(table), actor(mirrored_batch(table, info.preprocessing.image_size)))]
    assert np.abs(scored[0] - scored[1]).max() < 1e-5
