"""Does test-time augmentation with flips pay for its cost? Measured on a model's recorded validation split.

    python -m tools.flip_study [--model models/<version>] [--cache DIR]

Scores the validation images with the model's ONNX export as they are, and averaged with their left-right mirror
(the hemispheres swap; a tumor is as likely on either side), and with the mirror and the up-down flip too: the
calibrated probabilities of the views averaged, at the model's threshold: accuracy, macro-F1, recall per class, tumor sensitivity and
specificity. Each view costs one more inference per image.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from infra import storage
from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.onnx_runtime import OnnxPredictor
from model.quantize import figures
from tools.fit_ood import split_arrays

VIEWS = {"as is": (lambda images: images,),
         "with the left-right mirror": (lambda images: images, lambda images: images[:, :, ::-1]),
         "with both flips": (lambda images: images, lambda images: images[:, :, ::-1],
                             lambda images: images[:, ::-1, :])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.DEFAULT_MODEL,
                        help="model folder or registry (default: the current model)")
    parser.add_argument("--cache", help="preprocessed-image cache of jobs.retrain (saves decoding the data again)")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    info = registry.load_model_info(args.model)
    _, (images, targets, _) = split_arrays(info, args.cache)
    predictor = OnnxPredictor(storage.read_bytes(info.onnx_uri), len(info.class_names), info.temperature, 2, 64)
    report = {"model": info.version, "validation_images": len(images)}
    for name, views in VIEWS.items():  # calibrated probabilities averaged, as jobs.screen --mirror-average does
        averaged = np.mean([predictor(np.ascontiguousarray(view(images))) for view in views], axis=0)
        report[name] = {"inferences_per_image": len(views), **figures(averaged, targets, info.threshold)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
