"""Cross-validation of the training recipe (``jobs.retrain --folds K``): K real Ray Train runs on duplicate-aware
folds of the committed labelled samples, every image validated exactly once, each figure's mean and spread reported
and written, and the registry left alone. Minutes: marked slow."""

import json
import pathlib

import numpy as np
import pytest

from model.data import list_labelled_images, load_labelled_dataset
from model.dedup import group_near_duplicates
from model.data import THUMBNAIL, URI
from pipeline.crossval import FIGURES, cross_validate, fold_of_each_image
from tests.support.training import small_retraining

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory, ray_local):
    output = tmp_path_factory.mktemp("crossval")
    config = small_retraining(output, epochs=1, version="unused")
    return output, config, cross_validate(config, folds=2)


def test_every_image_is_validated_once_and_each_figure_is_summarised(report):
    _, _, result = report
    assert [fold["fold"] for fold in result["per_fold"]] == [0, 1]
    assert sum(fold["validation_images"] for fold in result["per_fold"]) == result["images"]
    for name in FIGURES:
        values = [fold[name] for fold in result["per_fold"]]
        summary = result["summary"][name]
        assert summary["mean"] == pytest.approx(np.mean(values)) and summary["std"] == pytest.approx(
            np.std(values, ddof=1))
        assert summary["min"] <= summary["mean"] <= summary["max"]


def test_the_report_is_written_and_the_registry_untouched(report):
    output, config, result = report
    written = json.loads(pathlib.Path(result["uri"]).read_text())
    assert written["summary"] == result["summary"] and written["folds"] == 2
    assert not (pathlib.Path(config.output) / "registry.json").exists()


def test_no_near_duplicate_group_spans_two_folds(report, ray_local):
    _, config, _ = report
    dataset = load_labelled_dataset(list_labelled_images(config.data), config.preprocessing).materialize()
    folds = fold_of_each_image(dataset, config, 2)
    table = dataset.select_columns([URI, THUMBNAIL]).to_pandas().sort_values(URI, ignore_index=True)
    groups = group_near_duplicates(np.stack(table[THUMBNAIL].to_numpy()), config.duplicate_similarity)
    assert list(table[URI]) == list(folds[URI])
    for group in np.unique(groups):
        assert folds["fold"][groups == group].nunique() == 1
    assert set(folds["fold"]) == {0, 1}
