"""Retraining with radiologists' verdicts (``--reviews``): a real small run (the committed labelled samples, one
epoch, one Ray Train worker) adds exactly the slices the verdicts of a reviewed night label, for training only: a
copy of a validation image is left out as its near-duplicate, a file gone since is left out and named by its
reference, and the candidate's record and card say so. Minutes: marked slow."""

import dataclasses
import json
import logging
import os
import pathlib

import pytest

from model import registry
from model.data import list_labelled_images, load_labelled_dataset
from pipeline.retrain import ALREADY_LABELLED, NEAR_DUPLICATE, UNREADABLE, retrain, source_split
from pipeline.review.examples import NOT_FOUND
from tests.conftest import TEST_KEY
from tests.support.reviews import EXPECTED, reviewed_night
from tests.support.training import small_retraining

pytestmark = pytest.mark.slow


def test_retraining_with_reviews_adds_exactly_the_reviewed_slices(tmp_path, ray_local, monkeypatch, caplog):
    config = small_retraining(tmp_path, epochs=1, version="with-reviews")
    images = list_labelled_images(config.data)
    before = source_split(load_labelled_dataset(images, config.preprocessing), config, images)
    validation = before.validation.to_pandas()
    validation_image = sorted(validation["uri"][validation["label"] == "notumor"])[0]
    night = reviewed_night(tmp_path / "night", pathlib.Path(validation_image))
    os.remove(night.vanished)
    monkeypatch.setenv("PSEUDONYM_KEY", TEST_KEY)

    with caplog.at_level(logging.WARNING, logger="pipeline.retrain"):
        outcome = retrain(dataclasses.replace(config, reviews=(str(night.results),)))

    reviews = outcome.reviews
    assert reviews["examples"] == 5 and reviews["by_label"] == {"glioma": 1, "meningioma": 1, "notumor": 3}
    assert reviews["by_source"] == {"reviews/results": 5} and reviews["cases"] == EXPECTED["cases"]
    assert reviews["dropped"] == {NOT_FOUND: 1, UNREADABLE: 1, NEAR_DUPLICATE: 1}
    assert ALREADY_LABELLED not in reviews["dropped"]
    metadata = json.loads((tmp_path / "registry" / "with-reviews" / registry.METADATA_FILE).read_text())
    assert metadata["training"]["reviewed_examples"] == json.loads(json.dumps(reviews))
    split = metadata["training"]["split"]
    assert split == json.loads(json.dumps(dataclasses.asdict(before.summary)))  # the split is the one without reviews
    assert metadata["ood"]["training_images"] == split["train_images"] + 5  # the five reviewed slices, no other
    assert metadata["validation_metrics"]["images"] == split["validation_images"]
    assert not any(source.startswith("reviews/") for source in metadata["validation_metrics"]["by_source"])
    card = (tmp_path / "registry" / "with-reviews" / "MODEL_CARD.md").read_text()
    assert "**5 reviewed slices** trained on (glioma 1, meningioma 1, notumor 3)" in card
    assert f"1 {NEAR_DUPLICATE}" in card and f"1 {UNREADABLE}" in card
    unreadable = [record.getMessage() for record in caplog.records if "cannot be read" in record.getMessage()]
    assert len(unreadable) == 1 and "f-" in unreadable[0] and "tumor-y147" not in unreadable[0]
