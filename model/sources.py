"""Where each labelled image came from, and what that changes in training: the split, the draw, the figures.

A model trained on one source per class learns the source as the class (every tumor-free slice from one scanner
makes "looks like that scanner" mean "no tumor"). So every labelled image carries its source (``model.data``: the
data set, and the site for other hospitals' slices), its sequence where known and its patient where known, and:

- the split keeps a patient's slices (all sequences) and each near-duplicate group on one side, and spreads every
  source's classes over both sides (:func:`site_split`);
- training draws each class evenly from the sources that have it, optionally at the folder-per-class data's class
  balance, and optionally, within another hospital's slices, each class evenly from the levels of the head (skull
  base, middle, top), so that where a slice lies does not stand for its class (:func:`balanced_weights`,
  :func:`head_levels`);
- validation is reported per source, per sequence and per level in the head, and a candidate is held to the
  current model on every source, class recall included, not only on the pooled figures (:func:`figures_by_source`,
  :func:`source_regressions`).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from model.data import LabelledImage
from model.dedup import grouped_split
from model.evaluate import figures_by_group

SOURCE, SEQUENCE, PATIENT, FROM_SITE, FROM_REVIEWS = "source", "sequence", "patient", "from_site", "from_reviews"
LEVEL = "level"  # a site slice's third of its patient's listed slices: 0 lowest, 2 highest, -1 not known
LEVELS = 3
LEVEL_BOOST = 4.0  # the most a level's images are lifted above their source's plain share of the class
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
    table[LEVEL] = head_levels([str(uri).split("#frame=")[0] for uri in uris], table[PATIENT].to_numpy())
    table[FROM_REVIEWS] = table[SOURCE].str.startswith(REVIEWS_SOURCE + "/") & ~table[FROM_SITE]
    return table


def slice_number(uri: str) -> int | None:
    """The slice number a site slice's file name ends in (``<patient>_<slice>.<ext>``), None without one."""
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    tail = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    return int(tail) if tail.isdigit() else None


def head_levels(uris: list[str], patients: np.ndarray) -> np.ndarray:
    """Each site slice's level in the head: the third (0, 1, 2) of its patient's range of listed slice numbers it
    falls in, counted over all the patient's slices whatever their label or sequence; -1 for an image without a
    patient or a slice number. In the LGG data most tumor-free slices lie low in the head and most gliomas in the
    middle, which a model can learn instead of the tumor."""
    numbers = np.array([number if patient and (number := slice_number(uri)) is not None else -1
                        for uri, patient in zip(uris, patients)], np.int64)
    levels = np.full(len(uris), -1, np.int64)
    known = numbers >= 0
    if not known.any():
        return levels
    table = pd.DataFrame({"patient": np.asarray(patients)[known], "number": numbers[known]})
    low = table.groupby("patient")["number"].transform("min").to_numpy()
    span = table.groupby("patient")["number"].transform("max").to_numpy() - low
    position = np.where(span > 0, (table["number"].to_numpy() - low) / np.maximum(span, 1), 0.5)
    levels[known] = np.minimum((position * LEVELS).astype(np.int64), LEVELS - 1)
    return levels


PATIENT_TOKEN_HEX = 4  # hex digits kept of a patient's hash (patient_token): 16 bits


def patient_token(source: str, patient: str) -> str:
    """A short token for one of a source's patients: its source and name hashed, 16 bits kept. A model records its
    validation patients by these, so that a later run can tell which of its own validation patients that model held
    out; a token cannot name a patient, since one in 65,536 of all possible names has it."""
    return hashlib.sha256(f"{source}\0{patient}".encode()).hexdigest()[:PATIENT_TOKEN_HEX]


def validation_tokens(sources: np.ndarray, patients: np.ndarray, in_validation: np.ndarray) -> dict[str, list[str]]:
    """Per source, the tokens of its validation patients (:func:`patient_token`), sorted."""
    pairs = {(str(source), str(patient)) for source, patient in zip(sources[in_validation], patients[in_validation])}
    tokens: dict[str, list[str]] = {}
    for source, patient in sorted(pairs):
        tokens.setdefault(source, []).append(patient_token(source, patient))
    return {source: sorted(values) for source, values in tokens.items()}


def held_out_by(recorded: dict[str, list[str]], sources: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Over a run's site images (their ``sources`` and ``patients``, every side of its split): those whose patient
    a model held out, by the validation tokens its record holds (:func:`validation_tokens`). A token that two of the
    run's patients of one source share cannot say which of them the model held out: neither counts as held out."""
    tokens = np.array([patient_token(str(source), str(patient)) for source, patient in zip(sources, patients)])
    table = pd.DataFrame({"source": np.asarray(sources).astype(str), "patient": np.asarray(patients).astype(str),
                          "token": tokens})
    patients_per_token = table.drop_duplicates(["source", "patient"]).groupby(["source", "token"]).size()
    shared = {key for key, count in patients_per_token.items() if count > 1}
    return np.array([token in recorded.get(source, ()) and (source, token) not in shared
                     for source, token in zip(table["source"], table["token"])], bool)


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


def balanced_weights(sources: np.ndarray, labels: np.ndarray, class_mass: dict | None = None,
                     levels: np.ndarray | None = None) -> np.ndarray:
    """Draw weights under which, within a class, each source that has it gives the same share (a class is never
    mostly one scanner's look), and each class's share of the draw is ``class_mass``'s (by default its share of
    the images). Giving the folder-per-class data's class counts keeps its class balance: adding another
    hospital's gliomas and tumor-free slices then adds looks, not a prior that drifts toward those classes.

    With ``levels`` (:func:`head_levels`), a source's share of a class is further spread evenly over the levels of
    the head its images of that class come from, so that within a source a slice's level says nothing of its
    class. Images of unknown level (-1) keep their source's plain share."""
    levels = np.full(len(labels), -1) if levels is None else np.asarray(levels)
    weights = np.zeros(len(labels), np.float64)
    for label in np.unique(labels):
        in_class = labels == label
        mass = in_class.sum() if class_mass is None else class_mass.get(str(label), in_class.sum())
        class_sources = np.unique(sources[in_class])
        for source in class_sources:
            chosen = in_class & (sources == source)
            share = mass / len(class_sources)
            if (levels[chosen] < 0).any():
                weights[chosen] = share / chosen.sum()
                continue
            present, counts = np.unique(levels[chosen], return_counts=True)
            # a level with few images (gliomas at the skull base) is lifted at most LEVEL_BOOST-fold, so that a
            # handful of slices is not drawn dozens of times an epoch
            per_image = np.minimum(chosen.sum() / (len(present) * counts), LEVEL_BOOST)
            for level, factor in zip(present, per_image):
                weights[chosen & (levels == level)] = factor
            weights[chosen] *= share / weights[chosen].sum()
    return weights


LEVEL_NAMES = ("skull base", "middle", "top")  # the thirds of the head, lowest first (head_levels)


@dataclasses.dataclass(frozen=True)
class SourceGroups:
    """Each validation image's source, its source and sequence together (``lgg-glioma/HT t1pre``), and its source
    and level in the head together (``lgg-glioma/HT middle``; the source alone where the level is not known)."""

    sources: np.ndarray
    sequences: np.ndarray
    levels: np.ndarray | None = None

    @classmethod
    def of(cls, table: pd.DataFrame) -> "SourceGroups":
        sources = table[SOURCE].to_numpy(dtype=object)
        sequences = np.array([f"{source} {sequence}" if sequence else source
                              for source, sequence in zip(sources, table[SEQUENCE])], dtype=object)
        levels = (np.array([f"{source} {LEVEL_NAMES[level]}" if level >= 0 else source
                            for source, level in zip(sources, table[LEVEL])], dtype=object)
                  if LEVEL in table else None)
        return cls(sources, sequences, levels)


def figures_by_source(probabilities: np.ndarray, labels: np.ndarray, groups: SourceGroups, threshold: float,
                      unfamiliar: np.ndarray | None = None) -> dict:
    """Sensitivity, specificity, unfamiliar share and class recall per source, per source and sequence, and per
    source and level in the head where levels are known."""
    unfamiliar = np.zeros(len(labels), bool) if unfamiliar is None else unfamiliar
    by_source = figures_by_group(probabilities, unfamiliar, labels, groups.sources, threshold)
    finer = {"by_sequence": groups.sequences, "by_level": groups.levels}
    figures = {"by_source": by_source}
    for key, names in finer.items():
        if names is not None:
            grouped = figures_by_group(probabilities, unfamiliar, labels, names, threshold)
            figures[key] = {name: values for name, values in grouped.items() if name not in by_source}
    return figures


def source_regressions(candidate: dict, current: dict, margin: float, class_margin: float = 1.0) -> list[str]:
    """Each source where the candidate's sensitivity or specificity falls more than ``margin`` below the current
    model's on the same validation images, or where a class's recall (the share of its images typed as that class)
    falls more than ``class_margin`` below it, in words. A model that still flags meningiomas but types fewer of
    them as meningioma is held back by the second."""
    problems = []
    for source, figures in sorted(candidate.items()):
        before = current.get(source, {})
        for measure in ("sensitivity", "specificity"):
            new, old = figures.get(measure), before.get(measure)
            if new is not None and old is not None and new < old - margin:
                problems.append(f"{measure} on {source} {new:.3f} against the current model's {old:.3f}")
        for label, new in sorted(figures.get("class_recall", {}).items()):
            old = before.get("class_recall", {}).get(label)
            if new is not None and old is not None and new < old - class_margin:
                problems.append(f"{label} recall on {source} {new:.3f} against the current model's {old:.3f}")
    return problems
