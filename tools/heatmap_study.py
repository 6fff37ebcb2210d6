"""Do the report's heat maps point at the tumor? Measured on glioma slices whose tumor was outlined by hand.

    python -m tools.heatmap_study [--model models/<version>] [--data ../shared/datasets/lgg-glioma] [--images 300]
                                  [--write]

Draws a fixed, seeded sample of the LGG set's glioma slices (another hospital's scans: TCGA-LGG), the same number
from each sequence (FLAIR, T1, T1 post-contrast) and spread over its patients. Each slice is decoded and
preprocessed as scoring does (``model.decode``, ``model.preprocessing``); its tumor mask and its head are carried
into the model input's geometry through the crop preprocessing took (``head_crop_box``, ``to_model_square``). The
slices the model flags at its operating point get the report's heat map (``model.gradcam.tumor_heat_maps``), and
for each sequence and overall this prints:

- ``peak_in_tumor``: the share of heat maps whose hottest pixel lies inside the tumor mask;
- ``peak_near_tumor``: the same with the mask dilated by ``TOLERANCE_PIXELS`` pixels at the model's resolution;
- ``heat_in_head`` and ``heat_in_tumor``: the mean share of a map's heat (the sum of its values) inside the head,
  and inside the tumor mask;
- ``tumor_area``: the mean share of the image the mask covers: what ``heat_in_tumor`` would be for a flat map;
- ``peak_in_tumor_by_chance``, ``peak_near_tumor_by_chance``: the mean share of the head that the mask, and the
  dilated mask, cover: what the two peak figures would be for a peak placed at random in the head.

With ``--write`` the figures go into the model's ``model.json`` under ``heatmap_localisation``, and the per-slice
results beside it as ``heatmap_localisation.json`` (its sha256 recorded; ``model.registry.attach_file``), where the
model card and the morning report's caption read them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import pathlib
import time

import cv2
import numpy as np

from infra import storage
from model import registry
from model.decode import decode_file
from model.preprocessing import PreprocessConfig, head_crop_box, head_region, normalize_intensity, \
    preprocess_image, to_grey, to_model_square

logger = logging.getLogger(__name__)

SEQUENCES = ("flair", "t1pre", "t1post")
TOLERANCE_PIXELS = 5  # at the model's resolution: 3% of a 160-pixel side, a third of a stride-16 feature cell
SEED = 0
DEFAULT_IMAGES = 300
DEFAULT_DATA = "../shared/datasets/lgg-glioma"
SLICES_FILE = "heatmap_localisation.json"


@dataclasses.dataclass(frozen=True)
class GliomaSlice:
    """One image of the LGG set's glioma slices and the tumor mask its sequences share."""

    patient: str
    slice_number: int
    sequence: str
    image_path: str
    mask_path: str

    @property
    def name(self) -> str:
        return f"{self.patient}_{self.slice_number}"


def glioma_slices(data: str, site: str | None = None) -> list[GliomaSlice]:
    """Every glioma image the set's ``slices.csv`` lists (of one ``site``'s patients, when given), with its mask, in
    the file's order."""
    root = pathlib.Path(data)
    with open(root / "slices.csv", newline="") as listing:
        rows = [row for row in csv.DictReader(listing)
                if row["label"] == "glioma" and (site is None or row.get("site") == site)]
    return [GliomaSlice(row["patient"], int(row["slice"]), row["sequence"],
                        str(root / "glioma" / row["sequence"] / f"{row['patient']}_{row['slice']}.jpg"),
                        str(root / "glioma" / "mask" / f"{row['patient']}_{row['slice']}.png")) for row in rows]


def sample_slices(slices: list[GliomaSlice], count: int, seed: int = SEED) -> list[GliomaSlice]:
    """``count`` slices, a third from each sequence, drawn at random with ``seed`` (so across the patients)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for sequence in SEQUENCES:
        of_sequence = [item for item in slices if item.sequence == sequence]
        picks = rng.choice(len(of_sequence), min(count // len(SEQUENCES), len(of_sequence)), replace=False)
        chosen += [of_sequence[index] for index in sorted(picks)]
    return chosen


@dataclasses.dataclass
class ModelInputs:
    """Slices as the model sees them, with their tumor masks and heads in the same geometry (boolean)."""

    images: np.ndarray
    tumors: np.ndarray
    heads: np.ndarray


def model_inputs(slices: list[GliomaSlice], config: PreprocessConfig) -> ModelInputs:
    """Each slice decoded and preprocessed as scoring does; its mask and head cropped, padded and resized alike."""
    images, tumors, heads = [], [], []
    for item in slices:
        frame = decode_file(storage.read_bytes(item.image_path), item.image_path).frames[0]
        box = head_crop_box(frame, config)
        mask = cv2.imread(item.mask_path, cv2.IMREAD_GRAYSCALE)
        head = head_region(normalize_intensity(to_grey(frame), config), config).astype(np.uint8) * 255
        images.append(preprocess_image(frame, config))
        tumors.append(to_model_square(mask, box, config.image_size) >= 128)
        heads.append(to_model_square(head, box, config.image_size) >= 128)
    return ModelInputs(np.stack(images), np.stack(tumors), np.stack(heads))


def within(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Each mask dilated by ``pixels`` (a disc)."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return np.array([cv2.dilate(mask.astype(np.uint8), disc) > 0 for mask in masks], dtype=bool).reshape(masks.shape)


def slice_figures(heat_maps: np.ndarray, tumors: np.ndarray, heads: np.ndarray,
                  tolerance: int = TOLERANCE_PIXELS) -> dict[str, np.ndarray]:
    """Per heat map: whether its peak is in the tumor, near it, and the shares of its heat in the head, the tumor."""
    count, pixels = len(heat_maps), int(np.prod(heat_maps.shape[1:]))
    heat = heat_maps.reshape(count, pixels).astype(np.float64)
    peaks, total = heat.argmax(axis=1), np.maximum(heat.sum(axis=1), 1e-12)
    tumors, near, heads = (masks.reshape(count, pixels) for masks in (tumors, within(tumors, tolerance), heads))
    head_area = np.maximum(heads.sum(axis=1), 1)
    return {"peak_in_tumor": tumors[np.arange(count), peaks], "peak_near_tumor": near[np.arange(count), peaks],
            "heat_in_head": (heat * heads).sum(axis=1) / total, "heat_in_tumor": (heat * tumors).sum(axis=1) / total,
            "tumor_area": tumors.mean(axis=1), "peak_in_tumor_by_chance": (tumors & heads).sum(axis=1) / head_area,
            "peak_near_tumor_by_chance": (near & heads).sum(axis=1) / head_area}


def summary(per_slice: dict[str, np.ndarray], selected: np.ndarray) -> dict:
    """The mean of each per-slice figure over the ``selected`` slices, and how many there were."""
    return {"images": int(selected.sum()),
            **{name: round(float(values[selected].mean()), 6) if selected.any() else None
               for name, values in per_slice.items()}}


def localisation_figures(heat_maps: np.ndarray, tumors: np.ndarray, heads: np.ndarray, sequences: list[str],
                         tolerance: int = TOLERANCE_PIXELS) -> dict:
    """The study's figures, overall and per sequence, for heat maps of flagged slices."""
    per_slice = slice_figures(heat_maps, tumors, heads, tolerance)
    sequences = np.asarray(sequences)
    return {"overall": summary(per_slice, np.ones(len(heat_maps), dtype=bool)),
            "per_sequence": {name: summary(per_slice, sequences == name) for name in SEQUENCES}}


def tumor_probabilities(images: np.ndarray, info: registry.ModelInfo) -> np.ndarray:
    """Each slice's calibrated tumor probability by the model's own graph (TensorFlow, as the reference backend)."""
    from model.labels import NO_TUMOR_INDEX
    from model.predict import ProbabilityPredictor, load_classifier

    predictor = ProbabilityPredictor(load_classifier(info, info.weights_sha256), temperature=info.temperature)
    return 1.0 - predictor(images)[:, NO_TUMOR_INDEX]


def study(model: str, data: str, images: int = DEFAULT_IMAGES, seed: int = SEED,
          site: str | None = None) -> tuple[dict, list[dict]]:
    """(the figures, the per-slice results) for the model at ``model`` on ``images`` glioma slices of ``data`` (of
    one ``site``'s patients, when given: for a model trained on the set, the site it was trained without)."""
    from model.gradcam import HEAT_MAP_METHOD, tumor_heat_maps  # TensorFlow

    info = registry.load_model_info(model)
    left_out = info.metadata.get("left_out_site", {}).get("site")
    if info.metadata.get("training", {}).get("site_data") and (site is None or site != left_out):
        raise SystemExit(f"{info.version} was trained on other hospitals' slices: measure it on a site it never saw "
                         f"(a leave-one-site-out run with --site <its left-out site>), not on its training patients")
    slices = sample_slices(glioma_slices(data, site), images, seed)
    inputs = model_inputs(slices, info.preprocessing)
    flagged = tumor_probabilities(inputs.images, info) >= info.threshold
    shown = [item for item, keep in zip(slices, flagged) if keep]
    started = time.monotonic()
    heat_maps = tumor_heat_maps(inputs.images[flagged], info)
    seconds = time.monotonic() - started
    figures = {"model": info.version, "site": site, "method": HEAT_MAP_METHOD, "data": pathlib.Path(data).name,
               "sampled": len(slices), "flagged": int(flagged.sum()), "threshold": round(info.threshold, 4),
               "seed": seed, "tolerance_pixels": tolerance_note(info.preprocessing),
               "heat_map_seconds": round(seconds, 1),  # the networks loaded once, then every flagged slice
               **localisation_figures(heat_maps, inputs.tumors[flagged], inputs.heads[flagged],
                                      [item.sequence for item in shown])}
    figures["summary"] = summary_sentence(figures)
    return figures, slice_records(shown, slice_figures(heat_maps, inputs.tumors[flagged], inputs.heads[flagged]))


SEQUENCE_NAMES = {"flair": "FLAIR", "t1pre": "T1", "t1post": "T1 post-contrast"}


def summary_sentence(figures: dict) -> str:
    """The figures in words, for the model card."""
    overall, tolerance = figures["overall"], figures["tolerance_pixels"]
    if not overall["images"]:
        return f"the model flagged none of {figures['sampled']} sampled glioma slices, so nothing was measured."
    by_sequence = ", ".join(f"{SEQUENCE_NAMES[name]} {share(figures['per_sequence'][name]['peak_in_tumor'])}"
                            for name in SEQUENCES if figures["per_sequence"][name]["images"])
    where = (f"measured with {figures['model']}, the same recipe trained without site {figures['site']}, on that "
             f"site's slices: " if figures.get("site") else "")
    return (f"{where}on the {overall['images']} of {figures['sampled']} seeded glioma slices with hand-drawn tumor "
            f"masks (TCGA-LGG) that the model flags, the heat map's peak falls inside the tumor on "
            f"{share(overall['peak_in_tumor'])} ({by_sequence}; a point at random in the head: "
            f"{share(overall['peak_in_tumor_by_chance'])}) and within {tolerance['pixels']} of "
            f"{tolerance['image_size']} pixels of it on {share(overall['peak_near_tumor'])}; "
            f"{share(overall['heat_in_head'])} of the heat lies inside the head and {share(overall['heat_in_tumor'])} "
            f"inside the tumor, which covers {share(overall['tumor_area'])} of the image. Method: {figures['method']}.")


def share(value: float) -> str:
    return f"{100 * value:.1f}%"


def tolerance_note(config: PreprocessConfig) -> dict:
    return {"pixels": TOLERANCE_PIXELS, "image_size": config.image_size}


def slice_records(shown: list[GliomaSlice], per_slice: dict[str, np.ndarray]) -> list[dict]:
    """One record per explained slice: its name, sequence and figures."""
    return [{"slice": item.name, "sequence": item.sequence,
             **{name: round(float(values[index]), 4) for name, values in per_slice.items()}}
            for index, item in enumerate(shown)]


def write_figures(model: str, figures: dict, slices: list[dict]) -> registry.ModelInfo:
    """The figures into the model's model.json under ``registry.HEATMAP_LOCALISATION``, the per-slice results
    beside it (``model``: the measured one, or the model whose recipe a leave-one-site-out run measured)."""
    info = registry.load_model_info(model)
    data = json.dumps(slices, indent=1).encode()
    return registry.attach_file(info, registry.HEATMAP_LOCALISATION, SLICES_FILE, data, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.DEFAULT_MODEL,
                        help="model folder or registry (default: the current model)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the LGG glioma set (its DATASET.md describes it)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="slices drawn, a third per sequence")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the draw")
    parser.add_argument("--site", help="only this site's patients: for a model trained on the set, a leave-one-site-out "
                                       "run of its recipe measured on the site it never saw")
    parser.add_argument("--write", action="store_true", help="record the figures in the model's model.json")
    parser.add_argument("--write-to", metavar="MODEL_DIR",
                        help="record them in this model's model.json instead (the model whose recipe --model's "
                             "leave-one-site-out run shares)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    figures, slices = study(args.model, args.data, args.images, args.seed, args.site)
    figures["seconds"] = round(time.monotonic() - started, 1)
    if args.write or args.write_to:
        info = write_figures(args.write_to or args.model, figures, slices)
        logger.info("heat-map localisation of %s recorded in %s", info.version, info.uri)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
