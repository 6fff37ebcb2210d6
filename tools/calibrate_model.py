"""Calibrate an already trained model on its own validation split, as ``jobs.retrain`` now does at the end of
training: temperature scaling, the operating point for tumor sensitivity >= 0.98, the figures and the card.

    python -m tools.calibrate_model --model models/<version>

For a model trained before retraining calibrated its candidates. The split is rebuilt from the data and the split
settings recorded in the model's ``model.json`` (the same files and seed give the same near-duplicate groups and the
same validation images); the weights are not changed. Needs the training data at the recorded paths.
"""

from __future__ import annotations

import argparse
import json

from infra import storage
from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.card import write_model_card
from model.config import RetrainConfig
from model.data import list_training_images, load_labelled_dataset
from model.predict import ProbabilityPredictor, load_classifier
from pipeline.retrain import calibrated_evaluation, split_by_groups, validation_arrays, write_candidate_figures


def recorded_split(info: registry.ModelInfo, cache: str | None = None):
    """(train, validation) datasets of the model's own split, rebuilt from the data (other hospitals' slices
    included) and split settings its model.json records; raises when the rebuilt split is not the recorded one."""
    training = info.metadata["training"]
    config = RetrainConfig(data=training["data"], output="", tumor_data=tuple(training["tumor_data"]),
                           site_data=tuple(training.get("site_data") or ()),
                           leave_out_site=training.get("leave_out_site"), preprocessing=info.preprocessing,
                           cache=cache)
    images = list_training_images(config.data, config.tumor_data, config.site_data)
    train, validation, split = split_by_groups(load_labelled_dataset(images, config.preprocessing, cache=cache),
                                               config, images)
    if not split.matches(training["split"]):
        raise RuntimeError(f"the rebuilt split ({split.validation_images} + {split.sites.get('validation_images', 0)} "
                           f"validation images) is not the one the model recorded: the data or the split code changed")
    return train, validation


def calibrate_model(model_dir: str, cache: str | None = None) -> dict:
    info = registry.load_model_info(model_dir)
    record = info.metadata
    training = record["training"]
    _, validation = recorded_split(info, cache)
    val_images, val_targets, val_labels = validation_arrays(validation)
    raw = ProbabilityPredictor(load_classifier(info))(val_images)
    metrics, records, calibrated = calibrated_evaluation(raw, val_targets, val_labels)
    updated = {**record, "validation_metrics": metrics, **records}
    storage.write_text(storage.join(model_dir, registry.METADATA_FILE), json.dumps(updated, indent=2, sort_keys=True))
    write_candidate_figures(storage.join(model_dir, "validation"), info.version, raw, calibrated, val_targets,
                            metrics, training["state"]["history"])
    write_model_card(model_dir)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--cache", help="preprocessed-image cache folder (as jobs.retrain --cache)")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    print(json.dumps(calibrate_model(args.model, args.cache), indent=2, default=str))


if __name__ == "__main__":
    main()
