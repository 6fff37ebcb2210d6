"""Judge a model on one hospital's labelled slices, as a leave-one-site-out run judges its left-out site.

    python -m tools.judge_site --model <model folder> --site-data ../shared/datasets/lgg-glioma --site HT [--write]

Reads the site's slices (``model.data.list_site_images``; ``--site`` names the site as the folder's ``slices.csv``
does), preprocesses them with the model's own parameters (through the preprocessed-image cache, as ``jobs.retrain``
does), and prints what a night would show: calibrated probabilities at the model's operating point, unfamiliar
slices unflagged, overall, per sequence and per level in the head (``pipeline.retrain.judge_site``).

With ``--write`` the figures replace the model's ``left_out_site`` record, for a leave-one-site-out run judged
before a figure existed (the per-level figures came later), so that ``python -m model.card --site-studies`` shows
them. A model that trained on the site's patients is refused: ``--write`` is only for a run that never saw them.
"""

from __future__ import annotations

import argparse
import json

from infra import storage
from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.data import DEFAULT_CACHE, IMAGE, LABEL, URI, list_site_images, load_labelled_dataset, names_site
from model.ood import OodDetector
from model.predict import load_classifier
from model.sources import SourceGroups, origins
from pipeline.retrain import column_arrays, judge_site


def judge(model_dir: str, site_data: str, site: str, cache: str | None) -> dict:
    info = registry.load_model_info(model_dir)
    images = [image for image in list_site_images(site_data) if names_site(image.source, site)]
    if not images:
        raise SystemExit(f"no slices of site {site!r} in {site_data}")
    dataset = load_labelled_dataset(images, info.preprocessing, cache=cache)
    arrays, labels, uris = column_arrays(dataset, [IMAGE, LABEL, URI])  # one read: rows stay in step
    groups = SourceGroups.of(origins(uris, images))
    detector = OodDetector.for_model(info)
    patients = len({image.patient for image in images})
    return judge_site(load_classifier(info), info, detector, arrays, labels.astype(str), groups,
                      {"site": site, "patients": patients})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--site-data", required=True, help="a site folder, as jobs.retrain --site-data")
    parser.add_argument("--site", required=True, help="the site to judge on, as slices.csv names it")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="preprocessed-image cache folder")
    parser.add_argument("--write", action="store_true",
                        help="replace the model's left_out_site record with these figures")
    args = parser.parse_args()
    path = storage.join(args.model, registry.METADATA_FILE)
    metadata = json.loads(storage.read_text(path))
    recorded = metadata.get("left_out_site")
    if args.write and not (recorded and names_site(args.site, recorded["site"])):
        raise SystemExit(f"{args.model} is not a leave-one-site-out run without site {args.site}: refusing to "
                         f"record figures on a site it may have trained on")
    configure_logging()
    ensure_ray()
    record = judge(args.model, args.site_data, args.site, args.cache)
    if args.write:
        metadata["left_out_site"] = record
        storage.write_text(path, json.dumps(metadata, indent=2, sort_keys=True))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
