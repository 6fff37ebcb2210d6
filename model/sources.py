"""Where each labelled image came from, and what that changes in training: the split, the draw, the figures.

A model trained on one source per class learns the source as the class (every tumor-free slice from one scanner
makes "looks like that scanner" mean "no tumor"). So every labelled image carries its source (``model.data``: the
data set, and the site for other hospitals' slices), its sequence where known and its patient where known, and:

- the split keeps a patient's slices (all sequences) and each near-duplicate group on one side, and spreads every
  source's classes over both sides (:func:`site_split`);
- training draws each class evenly from the sources that have it, optionally at the folder-per-class data's class
  balance (:func:`balanced_weights`);
- validation is reported per source and per sequence, and a candidate is held to the current model on every
  source, not only on the pooled figures (:func:`figures_by_source`, :func:`source_regressions`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from model.data import LabelledImage
from model.dedup import grouped_split
from model.evaluate import figures_by_group

SOURCE, SEQUENCE, PATIENT, FROM_SITE, FROM_REVIEWS = "source", "sequence", "patient", "from_site", "from_reviews"
REVIEWS_SOURCE = "reviews"  # radiologists' verdicts as examples (pipeline.review.examples): reviews/<results folder>


def reviews_source(results: str) -> str:
    """The source of the examples a results folder's verdicts give: ``reviews/<results folder name>``."""
    return f"{REVIEWS_SOURCE}/{results.rstrip('/').rsplit('/', 1)[-1]}"


def origins(uris: np.ndarray, images: list[LabelledImage]) -> pd.DataFrame:
    """Source, sequence and patient of each image (a frame URI ``...#frame=N`` is its file's), whether it is one of
    other hospitals' slices (those, listed by ``model.data.list_site_images``, name their patient), and whether a
    radiologist's verdict labelled it (source ``reviews/...``)."""
    by_file = {image.uri: image for image in images}
    known = [by_file.get(str(uri).split("#frame=")[0]) for uri in uris]
    table = pd.DataFrame({SOURCE: [image.source if image else "" for image in known],
                          SEQUENCE: [image.sequence if image else "" for image in known],
                          PATIENT: [image.patient if image else "" for image in known]})
    table[FROM_SITE] = table[PATIENT] != ""
    table[FROM_REVIEWS] = table[SOURCE].str.startswith(REVIEWS_SOURCE + "/") & ~table[FROM_SITE]
    return table


def merged_groups(near_duplicates: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """One group id per image joining near-duplicate groups and patients: two images share a group when a chain of
    same-patient or near-duplicate pairs links them (an image without a patient links by near-duplicates only)."""
    parent = list(range(len(near_duplicates)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for keys in (near_duplicates.tolist(), [patient or None for patient in patients.tolist()]):
        first = {}
        for index, key in enumerate(keys):
            if key is None:
                continue
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    roots = np.array([root(index) for index in range(len(parent))])
    return np.unique(roots, return_inverse=True)[1]


def site_split(groups: np.ndarray, sources: np.ndarray, labels: np.ndarray, validation_fraction: float,
               seed: int) -> np.ndarray:
    """Validation mask over other hospitals' images: whole groups (patients joined with near-duplicates) to one
    side, each source's classes spread over both."""
    strata = np.char.add(np.char.add(sources.astype(str), "|"), labels.astype(str))
    return grouped_split(groups, strata, validation_fraction, seed)


def balanced_weights(sources: np.ndarray, labels: np.ndarray, class_mass: dict | None = None) -> np.ndarray:
    """Draw weights under which, within a class, each source that has it gives the same share (a class is never
    mostly one scanner's look), and each class's share of the draw is ``class_mass``'s (by default its share of
    the images). Giving the folder-per-class data's class counts keeps its class balance: adding another
    hospital's gliomas and tumor-free slices then adds looks, not a prior that drifts toward those classes."""
    weights = np.zeros(len(labels), np.float64)
    for label in np.unique(labels):
        in_class = labels == label
        mass = in_class.sum() if class_mass is None else class_mass.get(str(label), in_class.sum())
        class_sources, counts = np.unique(sources[in_class], return_counts=True)
        for source, count in zip(class_sources, counts):
            weights[in_class & (sources == source)] = mass / (len(class_sources) * count)
    return weights


@dataclasses.dataclass(frozen=True)
class SourceGroups:
    """Each validation image's source, and its source and sequence together (``lgg-glioma/HT t1pre``)."""

    sources: np.ndarray
    sequences: np.ndarray

    @classmethod
    def of(cls, table: pd.DataFrame) -> "SourceGroups":
        sources = table[SOURCE].to_numpy(dtype=object)
        sequences = np.array([f"{source} {sequence}" if sequence else source
                              for source, sequence in zip(sources, table[SEQUENCE])], dtype=object)
        return cls(sources, sequences)


def figures_by_source(probabilities: np.ndarray, labels: np.ndarray, groups: SourceGroups, threshold: float,
                      unfamiliar: np.ndarray | None = None) -> dict:
    """Sensitivity, specificity, unfamiliar share and class recall per source and per source and sequence."""
    unfamiliar = np.zeros(len(labels), bool) if unfamiliar is None else unfamiliar
    by_source = figures_by_group(probabilities, unfamiliar, labels, groups.sources, threshold)
    by_sequence = figures_by_group(probabilities, unfamiliar, labels, groups.sequences, threshold)
    return {"by_source": by_source,
            "by_sequence": {name: figures for name, figures in by_sequence.items() if name not in by_source}}


def source_regressions(candidate: dict, current: dict, margin: float) -> list[str]:
    """Each source where the candidate's sensitivity or specificity falls more than ``margin`` below the current
    model's on the same validation images, in words."""
    problems = []
    for source, figures in sorted(candidate.items()):
        for measure in ("sensitivity", "specificity"):
            new, old = figures.get(measure), current.get(source, {}).get(measure)
            if new is not None and old is not None and new < old - margin:
                problems.append(f"{measure} on {source} {new:.3f} against the current model's {old:.3f}")
    return problems
