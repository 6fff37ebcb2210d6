"""int8 quantization of an existing model's ONNX export (``model.quantize``; ``jobs.retrain`` does it for every
candidate): speed on this CPU and the model card's validation metrics, float32 against int8.

    python -m tools.quantize_onnx --model models/mri-bilstm-v2 [--cache DIR] [--write]

Rebuilds the model's recorded split (the data must be at the recorded paths), calibrates on its training images,
measures both graphs on its validation images and prints the report. ``--write`` ships ``model.int8.onnx`` beside
the model (sha256 and figures in model.json; ``jobs.screen --backend onnx-int8`` runs it) when the metrics hold
within 0.5 points, and rewrites the model card.
"""

from __future__ import annotations

import argparse
import json

from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.card import write_model_card
from model.quantize import quantize_and_attach
from tools.fit_ood import split_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/mri-bilstm-v2")
    parser.add_argument("--cache", help="preprocessed-image cache of jobs.retrain (saves decoding the data again)")
    parser.add_argument("--write", action="store_true",
                        help="ship the int8 graph with the model when its metrics hold within 0.5 points")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    info = registry.load_model_info(args.model)
    (train, _, _), (images, targets, _) = split_arrays(info, args.cache)
    info, report = quantize_and_attach(info, train, images, targets, write=args.write)
    print(json.dumps({"model": info.version, **report}, indent=2))
    if args.write:
        if not report["metrics_hold"]:
            raise SystemExit("int8 metrics are more than 0.5 points from float32: not shipped")
        write_model_card(info.uri)


if __name__ == "__main__":
    main()
