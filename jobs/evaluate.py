"""Evaluate a model on a labelled folder: metrics.json and confusion_matrix.png.

    python -m jobs.evaluate --data <labelled dir|s3://...> [--model <model or registry dir>] --output <dir|s3://...>
"""

from __future__ import annotations

import argparse
import logging
import sys

from infra import storage
from jobs.runner import PROBABILITY, HelpFormatter, add_common_options, require_lasting_paths, run_job
from model.data import DEFAULT_CACHE, list_labelled_images
from model.backends import BACKENDS
from model.registry import DEFAULT_MODEL, load_model_info

logger = logging.getLogger("jobs.evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="labelled folder: one sub-folder per class")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model or registry folder (default: the shipped model, %(default)s)")
    parser.add_argument("--output", required=True, help="folder for metrics.json and confusion_matrix.png")
    parser.add_argument("--tumor-data", action="append", default=[], help="folder of unknown-type tumor images")
    parser.add_argument("--threshold", type=PROBABILITY, default=None,
                        help="tumor probability that flags an image (default: the model's operating point)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="inference backend, as jobs.screen's: auto = on this CPU the one jobs.screen runs by "
                             "default (float32 ONNX unless the model's int8 graph earned the default)")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help="preprocessed-image cache (as jobs.retrain --cache), used to read the model's training "
                             "data for the overlap check")
    add_common_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_lasting_paths(parser, args, "--output")
    return args


def check_inputs(args: argparse.Namespace) -> argparse.Namespace:
    """Before Ray starts: the model is there and verified, the labelled folders are usable."""
    for location in (args.data, *args.tumor_data, args.model, args.output):
        storage.check_reachable(location)
    load_model_info(args.model)
    list_labelled_images(args.data, tuple(args.tumor_data), every_class=False)
    return args


def evaluate(args: argparse.Namespace) -> dict:
    from pipeline.evaluate import evaluate_model  # TensorFlow loads here, after the arguments are known to be good

    metrics = evaluate_model(args.data, args.model, args.output, tuple(args.tumor_data), args.threshold, args.cache,
                             args.backend)
    tumor = metrics["tumor_vs_no_tumor"]
    logger.info("evaluated %s on %d images: accuracy %.4f, macro-F1 %.4f, tumor sensitivity %s, specificity %s; "
                "wrote %s", metrics["model_version"], metrics["images"], metrics["accuracy"] or 0.0,
                metrics["macro_f1"], tumor["sensitivity"], tumor["specificity"], args.output)
    overlap = metrics["training_overlap"]
    return {"model_version": metrics["model_version"], "backend": metrics["backend"], "images": metrics["images"],
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "tumor_sensitivity": tumor["sensitivity"],
            "tumor_specificity": tumor["specificity"], "overlap_checked": overlap["checked"],
            "near_duplicates_of_training_data": overlap.get("near_duplicates"),
            "unseen_accuracy": metrics.get("unseen_images_only", {}).get("accuracy"), "output": args.output}


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", parse_args(argv), check_inputs, evaluate)


if __name__ == "__main__":
    sys.exit(main())
