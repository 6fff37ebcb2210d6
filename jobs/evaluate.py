"""Evaluate a model on a labelled folder: metrics.json and confusion_matrix.png.

    python -m jobs.evaluate --data <labelled dir|s3://...> [--model <model or registry dir>] --output <dir|s3://...>
"""

from __future__ import annotations

import argparse
import logging
import sys

from infra.ray_runtime import configure_logging, ensure_ray
from model.data import DatasetError
from model.evaluate import evaluate_model
from model.registry import DEFAULT_MODEL, ModelError

logger = logging.getLogger("jobs.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled folder: one sub-folder per class")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model or registry folder (default: shipped model)")
    parser.add_argument("--output", required=True, help="folder for metrics.json and confusion_matrix.png")
    parser.add_argument("--tumor-data", action="append", default=[], help="folder of unknown-type tumor images")
    parser.add_argument("--threshold", type=float, default=0.5, help="tumor probability that flags an image")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    try:
        ensure_ray(args.address)
        metrics = evaluate_model(args.data, args.model, args.output, tuple(args.tumor_data), args.threshold)
    except (DatasetError, ModelError) as error:
        logger.error("%s", error)
        return 2
    tumor = metrics["tumor_vs_no_tumor"]
    logger.info("evaluated %s on %d images: accuracy %.4f, macro-F1 %.4f, tumor sensitivity %s, specificity %s; "
                "wrote %s", metrics["model_version"], metrics["images"], metrics["accuracy"] or 0.0,
                metrics["macro_f1"], tumor["sensitivity"], tumor["specificity"], args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
