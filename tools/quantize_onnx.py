"""int8 quantization of an existing model's ONNX export (``model.quantize``; ``jobs.retrain`` does it for every
candidate): speed on this CPU and the model card's validation metrics, float32 against int8.

    python -m tools.quantize_onnx [--model models/<version>] [--cache DIR] [--write]
    python -m tools.quantize_onnx [--model models/<version>] --refit-ood
    python -m tools.quantize_onnx [--model models/<version>] --judge [--held-out DIR ...]

``--refit-ood`` keeps the shipped int8 graph and only refits its unfamiliarity threshold on the validation images,
then measures it on the images that are not brain MRI ``tools.fit_ood`` uses (for a model quantized before
thresholds were refitted; quantizing now refits it as it ships).

``--judge`` keeps the shipped int8 graph and records its verdict under ``model.agreement``'s rule on the held-out
sets of ``model.heldout`` (validation variants, the sample archive, pydicom's non-MR images, and each ``--held-out``
folder): ``--backend auto`` runs the int8 graph only where that verdict says it earned it.

Rebuilds the model's recorded split (the data must be at the recorded paths), calibrates on its training images,
measures both graphs on its validation images and prints the report. ``--write`` ships ``model.int8.onnx`` beside
the model (sha256 and figures in model.json; ``jobs.screen --backend onnx-int8`` runs it) when the metrics hold
within 0.5 points, and rewrites the model card.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.card import write_model_card
from model.heldout import held_out_sets
from model.quantize import attach_agreement, quantize_and_attach, refit_ood
from tools.fit_ood import measure_detector, split_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.DEFAULT_MODEL,
                        help="model folder or registry (default: the current model)")
    parser.add_argument("--cache", help="preprocessed-image cache of jobs.retrain (saves decoding the data again)")
    parser.add_argument("--write", action="store_true",
                        help="ship the int8 graph with the model when its metrics hold within 0.5 points")
    parser.add_argument("--refit-ood", action="store_true",
                        help="refit the shipped int8 graph's unfamiliarity threshold, without quantizing again")
    parser.add_argument("--judge", action="store_true",
                        help="record the shipped int8 graph's verdict on held-out sets, without quantizing again")
    parser.add_argument("--held-out", action="append", default=[], metavar="DIR",
                        help="local folder of MRI the model was not trained on (repeatable; each a set)")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    info = registry.load_model_info(args.model)
    sets = {held_out_name(folder): folder for folder in args.held_out}
    if args.judge:
        _, (images, _, _) = split_arrays(info, args.cache)
        info = attach_agreement(info, held_out_sets(info.preprocessing, images, sets))
        write_model_card(info.uri)
        print(json.dumps(info.metadata["onnx_int8"]["held_out_agreement"], indent=2))
        return
    if args.refit_ood:
        _, (images, _, _) = split_arrays(info, args.cache)
        info = refit_ood(info, images, lambda detector, features_of, scores: measure_detector(
            detector, features_of, info, scores))
        write_model_card(info.uri)
        print(json.dumps({key: value for key, value in info.metadata["onnx_int8"].items() if key != "measured"},
                         indent=2))
        return
    (train, _, _), (images, targets, _) = split_arrays(info, args.cache)
    info, report = quantize_and_attach(info, train, images, targets, write=args.write,
                                       held_out=held_out_sets(info.preprocessing, images, sets))
    print(json.dumps({"model": info.version, **report}, indent=2))
    if args.write:
        if not report["metrics_hold"]:
            raise SystemExit("int8 metrics are more than 0.5 points from float32: not shipped")
        write_model_card(info.uri)


def held_out_name(folder: str) -> str:
    """A set's name from its folder's last two parts (``lgg-glioma/notumor/flair`` -> ``notumor/flair``)."""
    return "/".join(pathlib.PurePath(folder).parts[-2:])


if __name__ == "__main__":
    main()
