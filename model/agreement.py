"""Holding a faster graph to the reference's answers: the agreement rule, its figures, and the start-up check.

The float32 ONNX export is the reference on CPU (it gives TensorFlow's probabilities to 1e-4). A faster graph (the
int8 quantization) approximates it, and how well depends on the data (activation ranges calibrated on some images
saturate on others) and on the CPU (ONNX Runtime's u8s8 kernels saturate on x86 CPUs without VNNI). Two checks
follow from that:

- **The rule** (``holds``), for a graph to earn the CPU default: on every image set it was not tuned on, its
  decision (flagged, not flagged or unfamiliar) and its unfamiliar decision agree with the reference's on at least
  ``DECISION_AGREEMENT`` of the images, and its tumor probability is within ``PROBABILITY_TOLERANCE`` of the
  reference's on at least ``PROBABILITY_SHARE`` of them. ``model.quantize`` measures it; ``model.backends`` reads
  the verdict.
- **The start-up check** (``startup_check``): no test machine covers every CPU, so each int8 predictor is compared
  with float32 on the bundled check images (``check_images``: real slices, preprocessed by the model's own
  preprocessing) on the CPU it runs on, and is refused there when any decision differs or any tumor probability
  moves more than ``STARTUP_TOLERANCE``.

Both compare what a row would carry: the calibrated tumor probability, and the unfamiliar mark each graph's own
detector threshold gives. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

from model.labels import NO_TUMOR_INDEX
from model.preprocessing import PreprocessConfig, preprocess_image

DECISION_AGREEMENT = 0.995
PROBABILITY_TOLERANCE = 0.02
PROBABILITY_SHARE = 0.99
STARTUP_TOLERANCE = 0.05
CHECK_IMAGES = pathlib.Path(__file__).with_name("check_images.npz")  # written by tools.check_images

UNFAMILIAR, NOT_FLAGGED, FLAGGED = -1, 0, 1


@dataclasses.dataclass(frozen=True)
class Answers:
    """What rows would carry for a set of images: calibrated tumor probability and the unfamiliar mark."""

    tumor: np.ndarray  # (n,) float
    unfamiliar: np.ndarray  # (n,) bool

    def decisions(self, threshold: float) -> np.ndarray:
        """-1 unfamiliar (no flag), 1 flagged, 0 not flagged."""
        return np.where(self.unfamiliar, UNFAMILIAR, np.where(self.tumor >= threshold, FLAGGED, NOT_FLAGGED))


def answers(predictor, detector, images: np.ndarray) -> Answers:
    """``predictor`` (calibrated, with features) and its graph's ``detector`` (or None) on ``images``."""
    probabilities, features = predictor.with_features(images)
    unfamiliar = (np.zeros(len(images), bool) if detector is None or features is None
                  else detector.marks(detector.scores(features)))
    return Answers(1.0 - probabilities[:, NO_TUMOR_INDEX].astype(np.float64), np.asarray(unfamiliar, bool))


def agreement(reference: Answers, candidate: Answers, threshold: float) -> dict:
    """The rule's figures for one image set."""
    if len(reference.tumor) == 0:
        return {"images": 0}
    difference = np.abs(candidate.tumor - reference.tumor)
    return {"images": int(len(difference)),
            "decision_agreement": round(float(np.mean(reference.decisions(threshold)
                                                      == candidate.decisions(threshold))), 4),
            "unfamiliar_agreement": round(float(np.mean(reference.unfamiliar == candidate.unfamiliar)), 4),
            "probability_within_tolerance": round(float(np.mean(difference <= PROBABILITY_TOLERANCE)), 4),
            "max_probability_difference": round(float(difference.max()), 4)}


def holds(figures: dict) -> bool:
    """Whether one image set's figures meet the rule (an empty set says nothing and holds)."""
    return figures["images"] == 0 or (figures["decision_agreement"] >= DECISION_AGREEMENT
                                      and figures["unfamiliar_agreement"] >= DECISION_AGREEMENT
                                      and figures["probability_within_tolerance"] >= PROBABILITY_SHARE)


def verdict(per_set: dict[str, dict]) -> dict:
    """The rule over every set: its figures, which sets fail it, and whether the graph earns the default (never
    on no sets at all)."""
    failing = sorted(name for name, figures in per_set.items() if not holds(figures))
    return {"rule": rule_text(), "sets": per_set, "failing_sets": failing,
            "earns_default": bool(per_set) and not failing}


def rule_text() -> str:
    return (f"decision and unfamiliar decision as float32's on >= {DECISION_AGREEMENT:.1%} of the images of every "
            f"held-out set, tumor probability within {PROBABILITY_TOLERANCE} of float32's on >= "
            f"{PROBABILITY_SHARE:.0%}")


@functools.lru_cache(maxsize=4)
def check_images(config: PreprocessConfig) -> np.ndarray:
    """The bundled check slices (real MRI of the sample archive, decoded), as the model's inputs."""
    with np.load(CHECK_IMAGES, allow_pickle=False) as bundle:
        frames = [bundle[name] for name in sorted(bundle.files)]
    return np.stack([preprocess_image(frame, config) for frame in frames])


def startup_check(reference: Answers, candidate: Answers, threshold: float) -> str | None:
    """None when ``candidate`` answers as ``reference`` on the check images, else why not, in one sentence."""
    changed = int(np.sum(reference.decisions(threshold) != candidate.decisions(threshold)))
    moved = float(np.abs(candidate.tumor - reference.tumor).max()) if len(reference.tumor) else 0.0
    if changed == 0 and moved <= STARTUP_TOLERANCE:
        return None
    return (f"on this CPU the int8 graph changes {changed} of {len(reference.tumor)} check images' decisions and "
            f"moves a tumor probability by up to {moved:.3f} (tolerance {STARTUP_TOLERANCE})")

