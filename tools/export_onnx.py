"""Export model folders to ONNX for ONNX Runtime CPU inference, checked against TensorFlow, and record each export
(file, sha256, parity) in the model's model.json and card. New models get theirs from ``jobs.retrain``.

    python -m tools.export_onnx models/mri-bilstm-v2 [models/mri-pool-v1 ...]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from model import registry
from model.card import write_model_card
from model.decode import DecodeLimits
from model.onnx_export import export_and_attach
from model.predict import load_classifier
from pipeline import schema as col
from pipeline.scoring.stages import StageContext, file_rows

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "samples" / "archive"


def check_images(info: registry.ModelInfo) -> np.ndarray:
    """Every frame of the sample archive, preprocessed for this model as the scoring pipeline does."""
    context = StageContext("export", "1970-01-01", info.preprocessing, DecodeLimits(), b"x" * 32, 0.5, info.version,
                           info.weights_sha256)
    rows = [row for path in sorted(SAMPLES.rglob("*")) if path.is_file() for row in file_rows(str(path), context)]
    return np.stack([row[col.IMAGE] for row in rows if row[col.STATUS] == col.STATUS_OK])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders")
    for folder in parser.parse_args().models:
        info = registry.load_model_info(folder)
        images = check_images(info)
        exported = export_and_attach(load_classifier(info), info, images)
        write_model_card(exported.uri)
        print(json.dumps({"model": exported.version, **exported.metadata["onnx"]}))


if __name__ == "__main__":
    main()
