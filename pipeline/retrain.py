"""Retraining a classifier: the whole run, stage by stage.

1. List the labelled images (``model.data``), and the slices radiologists' verdicts label (``--reviews``,
   ``pipeline.review.examples``); unusable data stops the run before anything is written.
2. Read and preprocess them into a Ray Dataset, through the decoder scoring uses (``model.decode``); a reviewed
   slice whose file can no longer be read is left out, counted and named by its file reference.
3. Group near-duplicates and split train/validation by whole groups (``model.dedup``). Reviewed slices go to
   training only, and none that is a near-duplicate of an image the candidate is judged on.
4. Train with Ray Train (``model.train``): one network, or for an ensemble (``ArchitectureConfig.members``) each
   member in turn with its own seed (members already trained on this split may be reused instead, and each member
   trained here is kept as a model folder beside the candidate, so a run that stops between members loses none).
5. Evaluate the candidate, and the registry's current model, on the same validation images, each model with its
   own preprocessing (``model.evaluate``); calibrate the candidate (temperature scaling) and choose its flag
   threshold for tumor sensitivity >= 0.98 on that split (``model.calibration``).
6. Write the candidate (weights, ``model.json`` with its calibration and operating point, its ONNX export, its
   out-of-distribution detector fitted on the training images (``model.ood``), card, figures: confusion matrix,
   ROC curves, reliability diagram, training curves) and record the promotion decision in the registry:
   promoted only if its validation macro-F1 is not worse.
A failure after step 3 raises ``RunFailedError``: the registry's ``current`` model is unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib
import platform
import time

import numpy as np
import pandas as pd
import ray

from infra import storage
from model import registry
from model.architecture import build_classifier, load_members, member_networks
from model.card import write_model_card
from model.config import RetrainConfig, TrainConfig
from model.data import (IMAGE, LABEL, TARGET, THUMBNAIL, URI, WEIGHT, DatasetError, LabelledImage, load_frames,
                        list_training_images, load_labelled_dataset, names_site)
from model.dedup import group_near_duplicates, grouped_split
from model.calibration import (TARGET_SENSITIVITY, apply_temperature, fit_temperature, min_group_tumors,
                               operating_threshold)
from model.evaluate import (CURVES_FILE, RELIABILITY_FILE, evaluate_predictions, figures_by_group, reliability_png,
                            screening_figures, training_curves_png, write_evaluation)
from model.onnx_export import export_and_attach
from model.heldout import held_out_sets
from model.quantize import figures, quantize_and_attach
from model.ood import OOD_FILE, fit_and_describe
from model.predict import ProbabilityPredictor, load_classifier
from model.sources import (FROM_REVIEWS, FROM_SITE, LEVEL, PATIENT, SEQUENCE, SOURCE, SourceGroups, balanced_weights,
                           figures_by_source, held_out_by, merged_groups, origins, site_split, source_regressions,
                           validation_tokens)
from model.train import BEST_WEIGHTS, TUMOR_MAP_COLUMNS, train_classifier
from pipeline.errors import RunFailedError, describe_failure
from pipeline.pseudonym import load_key
from pipeline.review.examples import ReviewedExamples, read_all_reviews

logger = logging.getLogger(__name__)

ONNX_CHECK_IMAGES = 64  # validation images the ONNX export must reproduce TensorFlow's probabilities on
NEAR_DUPLICATE = "near-duplicate of a validation image"  # why a reviewed slice was not trained on
UNREADABLE = "source file unreadable"
ALREADY_LABELLED = "file already in the labelled data"
TOKENS = "validation_patient_tokens"  # the split record's tokens of each source's validation patients


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """The split of the folder-per-class data and tumor folders (near-duplicate groups), and of other hospitals'
    slices (``sites``: patients joined with near-duplicate groups, the tokens of each source's validation patients;
    the site a study leaves out)."""

    images: int
    duplicate_groups: int
    groups_with_duplicates: int
    train_images: int
    validation_images: int
    validation_by_label: dict
    sites: dict = dataclasses.field(default_factory=dict)

    def matches(self, recorded: dict | None, base_only: bool = False) -> bool:
        """Whether a model's recorded split is this one; with ``base_only``, whether its split of the base data is
        (a model trained before site data was added, whose validation images are this run's too)."""
        mine, recorded = dataclasses.asdict(self), dict(recorded or {"missing": True})
        if base_only or (not mine["sites"] and "sites" not in recorded):
            mine.pop("sites")
            recorded.pop("sites", None)
        elif TOKENS not in (recorded.get("sites") or {}):  # recorded before patient tokens: its counts must do
            mine["sites"] = {key: value for key, value in mine["sites"].items() if key != TOKENS}
        return recorded == mine


@dataclasses.dataclass(frozen=True)
class Split:
    train: ray.data.Dataset
    validation: ray.data.Dataset
    left_out: ray.data.Dataset | None  # the site a leave-one-site-out study judges on, kept out of both sides
    summary: SplitSummary
    origins: pd.DataFrame  # per image (URI sorted): source, sequence, patient (model.sources)
    uris: np.ndarray
    reviews: dict = dataclasses.field(default_factory=dict)  # reviewed slices trained on, and those left out


@dataclasses.dataclass(frozen=True)
class RetrainOutcome:
    version: str
    candidate_uri: str
    promoted: bool
    reason: str
    candidate_metrics: dict
    current_metrics: dict | None
    split: SplitSummary
    training_state: dict
    reviews: dict | None = None  # what radiologists' verdicts gave the candidate (``reviews_record``)


def near_duplicate_groups(dataset: ray.data.Dataset, config: RetrainConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The images' URIs and labels, sorted by URI, and each one's near-duplicate group (sorted, so splits depend only
    on the data and the seed, never on the order Ray returned the blocks in)."""
    table = dataset.select_columns([URI, LABEL, THUMBNAIL]).to_pandas().sort_values(URI, ignore_index=True)
    groups = group_near_duplicates(np.stack(table[THUMBNAIL].to_numpy()), config.duplicate_similarity)
    return table.drop(columns=[THUMBNAIL]), groups


def unread_columns(dataset: ray.data.Dataset, keep_maps: bool) -> list[str]:
    """The columns no training or validation reads: the thumbnails (the split is made), and the tumor maps unless
    ``keep_maps`` (training with ``tumor_map_weight``). Dropped where the split materializes its parts, so the
    images are copied once."""
    return [THUMBNAIL] + [name for name in (() if keep_maps else TUMOR_MAP_COLUMNS) if name in dataset.columns()]


def select_uris(dataset: ray.data.Dataset, uris: set, weights: dict | None = None,
                keep_maps: bool = False) -> ray.data.Dataset:
    """The images whose URI is in ``uris``, without the columns nothing reads (``unread_columns``), with their draw
    weight when ``weights`` gives one, materialized."""
    selected = dataset.filter(lambda row: row[URI] in uris).drop_columns(unread_columns(dataset, keep_maps))
    if weights:
        selected = selected.map_batches(
            lambda batch: {**batch, WEIGHT: np.array([weights[str(uri)] for uri in batch[URI]], np.float32)},
            batch_format="numpy")
    return selected.materialize()


def split_by_uris(dataset: ray.data.Dataset, held_out: set,
                  keep_maps: bool = False) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(the images outside ``held_out``, the images in it), as :func:`select_uris` leaves them (the tumor maps kept
    for training only with ``keep_maps``), materialized."""
    train = dataset.filter(lambda row: row[URI] not in held_out).drop_columns(unread_columns(dataset, keep_maps))
    train = train.materialize()
    return train, select_uris(dataset, held_out)


def base_split(table: pd.DataFrame, thumbnails: np.ndarray, config: RetrainConfig) -> tuple[np.ndarray, SplitSummary]:
    """The folder-per-class data and tumor folders split by whole near-duplicate groups (the split every model
    before site data was trained on: the same images, threshold and seed give the same sides)."""
    groups = group_near_duplicates(thumbnails, config.duplicate_similarity)
    labels = table[LABEL].to_numpy().astype(str)
    in_validation = grouped_split(groups, labels, config.validation_fraction, config.split_seed)
    sizes = np.bincount(groups)
    summary = SplitSummary(
        images=len(table), duplicate_groups=int(len(sizes)), groups_with_duplicates=int((sizes > 1).sum()),
        train_images=int((~in_validation).sum()), validation_images=int(in_validation.sum()),
        validation_by_label={str(k): int(v) for k, v in zip(*np.unique(labels[in_validation], return_counts=True))})
    logger.info("near-duplicate groups: %d for %d images (%d groups hold more than one image)",
                summary.duplicate_groups, summary.images, summary.groups_with_duplicates)
    return in_validation, summary


def sites_split(table: pd.DataFrame, thumbnails: np.ndarray, config: RetrainConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Other hospitals' slices: (validation mask, left-out mask, summary). Patients joined with near-duplicate groups
    go whole to one side; the site ``leave_out_site`` names goes to neither."""
    sources = table[SOURCE].to_numpy().astype(str)
    left_out = np.array([names_site(source, config.leave_out_site)
                         for source in sources]) if config.leave_out_site else np.zeros(len(table), bool)
    if config.leave_out_site and not left_out.any():
        raise DatasetError(f"no site {config.leave_out_site!r} to leave out among the site data's sources "
                           f"{', '.join(sorted(set(sources)))}")
    kept = ~left_out
    groups = merged_groups(group_near_duplicates(thumbnails[kept], config.duplicate_similarity),
                           table[PATIENT].to_numpy()[kept])
    in_validation = np.zeros(len(table), bool)
    in_validation[kept] = site_split(groups, sources[kept], table[LABEL].to_numpy().astype(str)[kept],
                                     config.validation_fraction, config.split_seed)
    summary = {"images": len(table), "patients": int(table[PATIENT].nunique()),
               "train_images": int((kept & ~in_validation).sum()), "validation_images": int(in_validation.sum()),
               "validation_by_source": count_by(table[in_validation], [SOURCE, LABEL]),
               "validation_patients": int(table[PATIENT][in_validation].nunique()),
               TOKENS: validation_tokens(sources, table[PATIENT].to_numpy(), in_validation)}
    if config.leave_out_site:
        summary["left_out"] = {"site": config.leave_out_site, "images": int(left_out.sum()),
                               "patients": int(table[PATIENT][left_out].nunique())}
    logger.info("other hospitals' slices: %d images of %d patients, %d to validation%s", len(table),
                summary["patients"], summary["validation_images"],
                f", {int(left_out.sum())} of site {config.leave_out_site} left out" if config.leave_out_site else "")
    return in_validation, left_out, summary


def counts(values: pd.Series) -> dict:
    return {str(value): int(count) for value, count in sorted(values.value_counts().items())}


def count_by(table: pd.DataFrame, columns: list[str]) -> dict:
    return {" ".join(key): int(count) for key, count in table.groupby(columns).size().items()}


def source_split(dataset: ray.data.Dataset, config: RetrainConfig, images: list[LabelledImage]) -> Split:
    """Train, validation and left-out datasets, each image's origin, and a summary of the split: the base data by
    near-duplicate groups (:func:`base_split`), other hospitals' slices by patient (:func:`sites_split`); with more
    than one source per class, training draws each class evenly from its sources (at the base data's class balance
    with ``class_balance``; ``model.sources``)."""
    table = dataset.select_columns([URI, LABEL, THUMBNAIL]).to_pandas().sort_values(URI, ignore_index=True)
    table = pd.concat([table, origins(table[URI].to_numpy(), images)], axis=1)
    thumbnails = np.stack(table[THUMBNAIL].to_numpy())
    site, reviewed = table[FROM_SITE].to_numpy(), table[FROM_REVIEWS].to_numpy()
    in_validation, left_out = np.zeros(len(table), bool), np.zeros(len(table), bool)
    base = ~site & ~reviewed
    in_validation[base], summary = base_split(table[base], thumbnails[base], config)
    if site.any():
        in_validation[site], left_out[site], sites = sites_split(table[site].reset_index(drop=True),
                                                                 thumbnails[site], config)
        summary = dataclasses.replace(summary, sites=sites)
    elif config.leave_out_site:
        raise DatasetError(f"--leave-out-site {config.leave_out_site} needs site data (--site-data)")
    unseen = reviewed_apart(thumbnails, reviewed, in_validation | left_out, config)
    training = ~in_validation & ~left_out & ~(reviewed & ~unseen)
    labels = table[LABEL].to_numpy().astype(str)
    base_classes = dict(zip(*np.unique(labels[training & ~site], return_counts=True)))
    weights = balanced_weights(table[SOURCE].to_numpy().astype(str)[training], labels[training],
                               {str(label): int(count) for label, count in base_classes.items()}
                               if config.training.class_balance else None,
                               table[LEVEL].to_numpy()[training] if config.training.level_balance else None)
    uris = table[URI].to_numpy().astype(str)
    draw = (dict(zip(uris[training], weights.tolist()))
            if config.training.balance_sources and not np.allclose(weights, 1.0) else None)
    keep_maps = bool(config.training.tumor_map_weight)
    return Split(train=select_uris(dataset, set(uris[training]), draw, keep_maps),
                 validation=select_uris(dataset, set(uris[in_validation])),
                 left_out=select_uris(dataset, set(uris[left_out])) if left_out.any() else None,
                 summary=summary, origins=table[[SOURCE, SEQUENCE, PATIENT, LEVEL]], uris=uris,
                 reviews=reviewed_summary(table[reviewed & unseen], int((reviewed & ~unseen).sum()))
                 if reviewed.any() else {})


def reviewed_apart(thumbnails: np.ndarray, reviewed: np.ndarray, judged: np.ndarray,
                   config: RetrainConfig) -> np.ndarray:
    """The reviewed slices in no near-duplicate group with an image the candidate is judged on (validation, a
    left-out site): only those may be trained on, so no figure counts an image the candidate learnt."""
    apart, among = np.zeros(len(reviewed), bool), reviewed | judged
    if not reviewed.any():
        return apart
    groups = group_near_duplicates(thumbnails[among], config.duplicate_similarity)
    apart[among] = reviewed[among] & ~np.isin(groups, groups[judged[among]])
    return apart


def reviewed_summary(kept: pd.DataFrame, near_duplicates: int) -> dict:
    """The reviewed slices trained on, by label and by source, and how many were left out as near-duplicates."""
    summary = {"examples": len(kept), "by_label": counts(kept[LABEL]), "by_source": counts(kept[SOURCE]),
               "dropped": {NEAR_DUPLICATE: near_duplicates} if near_duplicates else {}}
    logger.info("reviewed slices: %d to training (%s)%s", len(kept), json.dumps(summary["by_label"]),
                f", {near_duplicates} left out as near-duplicates of validation images" if near_duplicates else "")
    return summary


def split_by_groups(dataset: ray.data.Dataset, config: RetrainConfig, images: list[LabelledImage] = ()):
    """Train and validation datasets that never share a near-duplicate group (nor a patient), and a summary of the
    split."""
    split = source_split(dataset, config, list(images))
    return split.train, split.validation, split.summary


def column_arrays(dataset: ray.data.Dataset, columns: list[str]) -> list[np.ndarray]:
    """Whole columns of a (small, materialized) dataset as numpy, in one order for all of them."""
    batches = [ray.get(ref) for ref in dataset.select_columns(columns).to_numpy_refs()]
    batches = [batch for batch in batches if columns[0] in batch]  # a block filtered to nothing may have no columns
    return [np.concatenate([batch[column] for batch in batches]) for column in columns]


def validation_arrays(validation: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, targets, labels = column_arrays(validation, [IMAGE, TARGET, LABEL])
    return images, targets, labels.astype(str)


def origin_groups(split: Split, uris: np.ndarray) -> SourceGroups:
    """The source and sequence of each image named in ``uris`` (read with the images, in one ``column_arrays``
    call, so the two stay in step)."""
    rows = pd.Series(np.arange(len(split.uris)), index=split.uris)[uris.astype(str)].to_numpy()
    return SourceGroups.of(split.origins.iloc[rows].reset_index(drop=True))


def evaluate_current(config: RetrainConfig, split: Split, images, targets, labels, uris: np.ndarray,
                     groups: SourceGroups, candidate: tuple[np.ndarray, float]) -> dict | None:
    """Validation metrics of the registry's current model on this run's validation images (named by ``uris``), if
    it has one, with its figures per source. Where its recorded split of a source is not this run's
    (:func:`split_differs`), its figures there may count patients it trained on: that source is judged again, for
    it and for the ``candidate`` (calibrated probabilities, threshold), on the images of patients both held out
    (``both_held_out``, :func:`held_out_by_both`). A model with other preprocessing (another input size, say) reads
    the images through its own."""
    if not registry.read_registry(config.output).get("current"):
        return None
    info = registry.load_model_info(config.output)
    training = info.metadata.get("training", {})
    differs = split_differs(training, split.summary)
    judged = held_out_by_both(training, split, uris, differs)
    if differs:
        logger.warning("current model %s was trained on another split of %s: %s", info.version, ", ".join(differs),
                       "both models are judged there on the patients both held out" if judged is not None else
                       "its validation figures there may count patients it trained on, a bar it clears more easily "
                       "than a candidate (its record names no validation patients)")
    if info.preprocessing != config.preprocessing:
        logger.info("current model %s has its own preprocessing: validation images read again with it", info.version)
        images, targets, labels, reread = column_arrays(reload_validation(split.validation, info.preprocessing),
                                                        [IMAGE, TARGET, LABEL, URI])
        # put in this run's order by URI: the sources (groups) and the judged images follow it, and a dataset read
        # again keeps no promise of its rows' order
        order = pd.Series(np.arange(len(reread)), index=reread.astype(str))[uris.astype(str)].to_numpy()
        images, targets, labels = images[order], targets[order], labels[order].astype(str)
    probabilities = ProbabilityPredictor(load_classifier(info), temperature=info.temperature)(images)
    metrics = {**evaluate_predictions(probabilities, targets, labels, info.threshold),
               **figures_by_source(probabilities, labels, groups, info.threshold), "version": info.version,
               "split_differs": differs}
    if judged is not None:
        metrics["both_held_out"] = both_held_out(judged, targets, labels, groups.sources, differs,
                                                 {"current": (probabilities, info.threshold), "candidate": candidate})
    return metrics


def split_differs(training: dict, summary: SplitSummary) -> list[str]:
    """Other hospitals' sources whose validation patients a model (``training``: its training record) may have
    trained on: it trained on the source (its record splits that source's slices, and that site was not left out)
    and the validation it records for that source is not this run's (a split drawn by an earlier rule, or from
    other data): other validation patients (their tokens) where both record them, else other image counts per
    source and label."""
    def per_source(sites: dict) -> dict:  # {source: ({label: images}, validation patient tokens or None)}
        grouped = collections.defaultdict(lambda: ({}, None))
        for key, count in sites.get("validation_by_source", {}).items():
            source, label = key.rsplit(" ", 1)
            grouped[source][0][label] = count
        tokens = sites.get(TOKENS, {})
        return {source: (labels, tokens.get(source) if TOKENS in sites else None)
                for source, (labels, _) in grouped.items()}

    mine = per_source(summary.sites or {})
    theirs = per_source((training.get("split") or {}).get("sites") or {})
    left_out = training.get("leave_out_site")

    def same(source: str) -> bool:
        (my_counts, my_tokens), (their_counts, their_tokens) = mine[source], theirs[source]
        return my_counts == their_counts and (my_tokens is None or their_tokens is None or my_tokens == their_tokens)

    # a source the record does not split, or the site it left out, was never trained on: its figures are fair
    return [source for source in sorted(mine) if source in theirs and not same(source)
            and not (left_out and names_site(source, left_out))]


def held_out_by_both(training: dict, split: Split, uris: np.ndarray, differs: list[str]) -> np.ndarray | None:
    """Over this run's validation images (named by ``uris``): those the model of ``training`` held out too. That is
    every image outside the sources whose split ``differs``, and within them the images of the patients its record
    names by token (``model.sources.held_out_by``, which asks every patient of this run, on either side, so that
    a token two patients share is counted for neither). None where the record names no patients of such a source
    (a model recorded before tokens)."""
    recorded = ((training.get("split") or {}).get("sites") or {}).get(TOKENS)
    if not differs or recorded is None or any(source not in recorded for source in differs):
        return None
    sources, patients = split.origins[SOURCE].to_numpy().astype(str), split.origins[PATIENT].to_numpy().astype(str)
    judged = ~np.isin(sources, differs) | held_out_by(recorded, sources, patients)
    return judged[pd.Series(np.arange(len(split.uris)), index=split.uris)[uris.astype(str)].to_numpy()]


def both_held_out(judged: np.ndarray, targets: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                  differs: list[str], models: dict[str, tuple[np.ndarray, float]]) -> dict:
    """Each model's figures (``models``: name -> calibrated probabilities, threshold) on the ``differs`` sources'
    images that ``judged`` keeps, its macro-F1 on all the images ``judged`` keeps, and how many images those are."""
    kept = judged & np.isin(sources, differs)
    figures = {name: figures_by_group(probabilities[kept], np.zeros(int(kept.sum()), bool), labels[kept],
                                      sources[kept], threshold)
               for name, (probabilities, threshold) in models.items()}
    macro_f1 = {name: evaluate_predictions(probabilities[judged], targets[judged], labels[judged], threshold)
                ["macro_f1"] for name, (probabilities, threshold) in models.items()}
    return {**figures, "macro_f1": macro_f1, "judged_images": int(judged.sum()), "all_images": len(judged),
            "images": {source: [int((kept & (sources == source)).sum()), int((sources == source).sum())]
                       for source in differs}}


def reload_validation(validation: ray.data.Dataset, preprocessing) -> ray.data.Dataset:
    """The validation files read again with other preprocessing (a multi-frame file gives all its frames)."""
    rows = validation.select_columns([URI, LABEL]).take_all()
    files = dict.fromkeys((str(row[URI]).split("#frame=")[0], str(row[LABEL])) for row in rows)
    return load_labelled_dataset([LabelledImage(uri, label) for uri, label in files], preprocessing)


def promotion_decision(candidate: dict, current: dict | None, min_macro_f1: float,
                       source_margin: float = 1.0, class_margin: float = 1.0) -> tuple[bool, str]:
    """Promote a first model only above the quality floor, a later one only if it is not worse than the current on
    validation macro-F1, no source's sensitivity or specificity falls more than ``source_margin`` below the
    current model's, and no source's class recall more than ``class_margin`` below it. A source the current model
    split otherwise is compared on the images of the patients both models held out (``both_held_out``, from
    :func:`evaluate_current`), where it has them."""
    new = candidate["macro_f1"]
    if current is None:
        if new < min_macro_f1:
            return False, (f"validation macro-F1 {new:.4f} is below the floor of {min_macro_f1:.2f} for a first model; "
                           f"it stays a candidate")
        return True, f"the registry has no current model and validation macro-F1 {new:.4f} meets the floor"
    fair, old = current.get("both_held_out", {}), current["macro_f1"]
    if fair:  # the images of the patients both models held out
        new, old = fair["macro_f1"]["candidate"], fair["macro_f1"]["current"]
    judged = judged_on(fair)
    if new < old:
        return False, f"validation macro-F1 {new:.4f} is worse than the current model's {old:.4f}{judged}"
    # a source none of whose validation patients both held out is not compared: there is no fair figure of it
    unjudged = {source for source, (kept, _) in fair.get("images", {}).items() if not kept}
    mine, theirs = ({source: figures
                     for source, figures in {**metrics.get("by_source", {}), **fair.get(name, {})}.items()
                     if source not in unjudged} for metrics, name in ((candidate, "candidate"), (current, "current")))
    regressions = source_regressions(mine, theirs, source_margin, class_margin)
    if regressions:
        doubtful = [source for source in current.get("split_differs", []) if source not in fair.get("images", {})
                    and source_regressions({source: mine.get(source, {})}, theirs, source_margin, class_margin)]
        caveat = (f" (the current model's figures on {', '.join(doubtful)} may count validation patients it trained "
                  f"on: its recorded split of those slices is not this run's)" if doubtful else "")
        return False, (f"validation macro-F1 {new:.4f} is not worse than the current model's {old:.4f}, but on a "
                       f"source it falls more than {source_margin:g} (a class recall more than {class_margin:g}) "
                       f"below it: {'; '.join(regressions)}{caveat}{judged}")
    return True, (f"validation macro-F1 {new:.4f} is not worse than the current model's {old:.4f}, and no source's "
                  f"sensitivity or specificity falls more than {source_margin:g} below it, nor a class recall more "
                  f"than {class_margin:g}{judged}")


def judged_on(fair: dict) -> str:
    """What a decision's reason adds where the current model split a source otherwise (``both_held_out``)."""
    if not fair:
        return ""
    sources = ", ".join(f"{source} on {kept} of its {total}" if kept else
                        f"{source} not compared, none of its {total}"
                        for source, (kept, total) in sorted(fair["images"].items()))
    return (f" (judged on the {fair['judged_images']} of {fair['all_images']} validation images whose patients both "
            f"models held out: {sources})")


def retrain(config: RetrainConfig, images: list[LabelledImage] | None = None,
            reviewed: ReviewedExamples | None = None) -> RetrainOutcome:
    """Train a candidate and decide on its promotion; see the module docstring for the stages. ``images`` and
    ``reviewed`` are the listings of stage 1 when the caller has made them already (the job does, before Ray
    starts; else the reviews are read with the pseudonym key in ``PSEUDONYM_KEY``)."""
    started = time.time()
    images = images if images is not None else list_training_images(config.data, config.tumor_data,
                                                                     config.site_data)
    if reviewed is None and config.reviews:
        reviewed = read_all_reviews(config.reviews, load_key())
    logger.info("labelled images: %d from %s (+%d tumor folders, %d site folders)", len(images), config.data,
                len(config.tumor_data), len(config.site_data))
    dataset = load_labelled_dataset(images, config.preprocessing, cache=config.cache)
    read = None
    if reviewed is not None:
        dataset, images, read = with_reviewed(dataset, images, reviewed, config)
    split = source_split(dataset, config, images)
    try:
        return train_and_decide(config, split, started,
                                reviews_record(read, split.reviews) if read is not None else None)
    except Exception as error:
        raise RunFailedError(f"retraining failed: {describe_failure(error)}; the registry's current model is "
                             f"unchanged") from error


def with_reviewed(dataset: ray.data.Dataset, images: list[LabelledImage], reviewed: ReviewedExamples,
                  config: RetrainConfig) -> tuple[ray.data.Dataset, list[LabelledImage], dict]:
    """The labelled images joined by the reviewed slices, read through the decoder and preprocessing scoring uses,
    and what reading them left out: a slice of a file already in the labelled data, and one whose file cannot be
    read (each such file logged by its reference, never its path)."""
    labelled = {image.uri for image in images}
    fresh = [image for image in reviewed.images if image.uri not in labelled]
    dropped = collections.Counter({ALREADY_LABELLED: len(reviewed.images) - len(fresh)})
    if fresh:
        frames, failed = load_frames([(image.labelled(), image.frame) for image in fresh], config.preprocessing)
        dropped[UNREADABLE] = sum(image.uri in failed for image in fresh)
        for uri, code in sorted(failed.items()):
            reference = next(image.reference for image in fresh if image.uri == uri)
            logger.warning("reviewed slice(s) of %s left out: the file cannot be read (%s)", reference, code)
        dataset = dataset.union(frames).materialize()
    record = {**reviewed.record,
              "dropped": {**reviewed.record["dropped"], **{why: count for why, count in dropped.items() if count}}}
    return dataset, images + [image.labelled() for image in fresh], record


def reviews_record(read: dict, split: dict) -> dict:
    """What the verdicts gave this candidate, as ``model.json`` keeps it: the results folders, their cases by state,
    the slices labelled, the examples trained on by label and source, and the slices left out and why."""
    return {"examples": 0, "by_label": {}, "by_source": {}, **read, **split,
            "dropped": {**read["dropped"], **split.get("dropped", {})}}


def calibrated_evaluation(raw: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> tuple[dict, dict, np.ndarray]:
    """Fit the temperature and choose the operating point on validation; return the metrics of the calibrated
    probabilities at that threshold, the ``calibration`` and ``operating_point`` records, and the probabilities."""
    temperature = fit_temperature(raw, targets)
    calibrated = apply_temperature(raw, temperature)
    threshold = operating_threshold(calibrated, targets)
    metrics = evaluate_predictions(calibrated, targets, labels, threshold)
    before = evaluate_predictions(raw, targets, labels)
    tumor, unknown = metrics["tumor_vs_no_tumor"], metrics.get("unknown_type_tumor_sensitivity", {})
    records = {
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature,
                        "expected_calibration_error_before": before["expected_calibration_error"],
                        "expected_calibration_error_after": metrics["expected_calibration_error"]},
        "operating_point": {"threshold": threshold, "target_sensitivity": TARGET_SENSITIVITY,
                            "chosen_on": f"validation tumors, all of them and each group of at least "
                                         f"{min_group_tumors(TARGET_SENSITIVITY)} (typed; of unknown type) reaching "
                                         f"the target; never above 0.5",
                            "validation_sensitivity": tumor["sensitivity"],
                            "validation_specificity": tumor["specificity"],
                            "unknown_type_tumor_sensitivity": unknown.get("sensitivity"),
                            "at_threshold_0.5": before["tumor_vs_no_tumor"]},
    }
    return metrics, records, calibrated


def write_candidate_figures(folder: str, version: str, raw: np.ndarray, calibrated: np.ndarray, targets: np.ndarray,
                            metrics: dict, history: list[dict]) -> None:
    """The pictures people look at: confusion matrix, ROC curves, reliability diagram, training curves."""
    write_evaluation(metrics, folder, f"{version} validation", calibrated, targets)
    storage.write_bytes(storage.join(folder, RELIABILITY_FILE),
                        reliability_png(raw, calibrated, targets, f"{version} validation"))
    storage.write_bytes(storage.join(folder, CURVES_FILE), training_curves_png(history, f"{version} training"))


def reuse_members(uri: str, config: RetrainConfig, split: SplitSummary) -> list[tuple[object, dict]]:
    """The networks of a model trained earlier, as members of this run's ensemble: a single network, or each network
    of an ensemble in its order. Refused unless it has the members' architecture and preprocessing and was trained on
    this run's data and split (else its validation figures would count images it trained on). The weights a network
    started from (``init_from``) may differ from this run's: that model's split was checked when it was trained from
    (``starting_weights``), and the member's record keeps it."""
    info = registry.load_model_info(uri)
    training = info.metadata.get("training", {})
    lineage = {**data_record(dataclasses.asdict(config)), "init_from": training.get("init_from")}
    problems = [what for what, same in (
        ("architecture", info.architecture.member() == config.architecture.member()),
        ("preprocessing", info.preprocessing == config.preprocessing),
        ("training data", data_record(training) == lineage),
        ("split", split.matches(training.get("split")))) if not same]
    if problems:
        raise ValueError(f"model {info.version} at {uri} cannot be a member of this ensemble: its "
                         f"{', '.join(problems)} differ from this run's")
    networks = member_networks(load_classifier(info), info.architecture, config.preprocessing.image_size)
    ensemble = info.architecture.is_ensemble
    records = (training.get("members") or [{}] * len(networks)) if ensemble else [training]
    logger.info("%d network(s) of %s reused from %s", len(networks), info.version, uri)
    return [(network, {**member_record(record.get("config", {}), record.get("state", {}), record.get("seconds"),
                                       f"{info.version} member {index}" if ensemble else info.version, reused=True),
                       "init_from": training.get("init_from")})
            for index, (network, record) in enumerate(zip(networks, records))]


def member_record(config: dict, state: dict, seconds: float | None, version: str | None, reused: bool) -> dict:
    return {"version": version, "reused": reused, "seed": config.get("seed"), "seconds": seconds, "config": config,
            "state": state}


def starting_weights(config: RetrainConfig, split: SplitSummary) -> list[list[np.ndarray]]:
    """The weights each member starts from: those of ``init_from``'s networks (member ``i`` from its network ``i``,
    cycling), or none (random initialisation). Refused unless that model has the members' architecture and
    preprocessing and was trained on this run's base data and split, and, where both it and this run train on other
    hospitals' slices, on this run's split of those too, so no validation image of this run is one it trained on."""
    if not config.init_from:
        return []
    info = registry.load_model_info(config.init_from)
    training = info.metadata.get("training", {})
    problems = [what for what, same in (
        ("architecture", info.architecture.member() == config.architecture.member()),
        ("preprocessing", info.preprocessing == config.preprocessing),
        ("training data", (training.get("data"), list(training.get("tumor_data", ())))
         == (config.data, list(config.tumor_data))),
        ("split", split.matches(training.get("split"),
                                base_only=not (training.get("site_data") and config.site_data)))) if not same]
    if problems:
        raise ValueError(f"model {info.version} at {config.init_from} cannot start this training: its "
                         f"{', '.join(problems)} differ from this run's")
    model = load_classifier(info)
    networks = (member_networks(model, info.architecture, config.preprocessing.image_size)
                if info.architecture.is_ensemble else [model])
    logger.info("training starts from the weights of %s (%d network(s))", info.version, len(networks))
    return [network.get_weights() for network in networks]


def train_members(config: RetrainConfig, train: ray.data.Dataset, validation: ray.data.Dataset,
                  split: SplitSummary, version: str) -> list[tuple[object, dict]]:
    """The model's networks and their records: reused members first, then the rest trained one after another
    (seed ``training.seed + index``; ``--resume-from`` continues the first one trained here; ``init_from`` gives
    their starting weights). In an ensemble each trained member is written at once as a model folder
    ``<version>-member<index>`` beside the candidate."""
    members = [member for uri in config.member_models for member in reuse_members(uri, config, split)]
    if len(members) > config.architecture.members:
        raise ValueError(f"the reused models hold {len(members)} networks, more than the ensemble's "
                         f"{config.architecture.members} members")
    reused = len(members)
    network, side = config.architecture.member(), config.preprocessing.image_size
    starts = starting_weights(config, split)
    for index in range(reused, config.architecture.members):
        started = time.time()
        training = dataclasses.replace(
            config.training, seed=config.training.seed + index,
            resume_from=config.training.resume_from if index == reused else None,
            run_name=f"{config.training.run_name}-member{index}"
            if config.training.run_name and config.architecture.members > 1 else config.training.run_name)
        weights_dir, state = train_classifier(train, validation, network, side, training,
                                              starts[index % len(starts)] if starts else None)
        model = build_classifier(network, side)
        model.load_weights(str(weights_dir / BEST_WEIGHTS))
        record = member_record(dataclasses.asdict(training), state, round(time.time() - started, 1), None, False)
        if config.architecture.members > 1:
            record["version"] = f"{version}-member{index}"
            registry.save_model(model, storage.join(config.output, record["version"]), record["version"], network,
                                config.preprocessing,
                                {"member_of": version, "parameters": int(model.count_params()),
                                 "training": {**training_record(config, split, record["seconds"]),
                                              "config": record["config"], "state": state}})
            logger.info("member %d of %d trained: %s", index + 1, config.architecture.members, record["version"])
        members.append((model, record))
    return members


def assemble(config: RetrainConfig, networks: list) -> object:
    """The candidate's graph: the one network, or the ensemble's averaging graph holding every member."""
    if not config.architecture.is_ensemble:
        return networks[0]
    return load_members(build_classifier(config.architecture, config.preprocessing.image_size), networks)


def ensemble_figures(config: RetrainConfig, networks: list, raw: np.ndarray, images: np.ndarray,
                     targets: np.ndarray) -> dict:
    """What each part of an ensemble adds, on validation, before calibration (accuracy, macro-F1, recall per class
    and the tumor figures at 0.5): each member alone, each with its mirror, the members averaged without the mirror,
    and the whole model (``raw``: its probabilities, already computed)."""
    predictors = [ProbabilityPredictor(network) for network in networks]
    alone = [predict(images) for predict in predictors]
    parts = {f"member {index}": probabilities for index, probabilities in enumerate(alone)}
    if config.architecture.mirror_views:
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        for index, predict in enumerate(predictors):
            parts[f"member {index} with its mirror"] = (alone[index] + predict(mirrored)) / 2
        if len(networks) > 1:
            parts["members without the mirror"] = np.mean(alone, axis=0)
    parts["the model"] = raw
    return {name: figures(probabilities, targets, 0.5) for name, probabilities in parts.items()}


def training_record(config: RetrainConfig, split: SplitSummary, seconds: float) -> dict:
    return {"seconds": seconds, "hardware": training_hardware(config.training), "split": dataclasses.asdict(split),
            "class_balance": bool(config.site_data and config.training.balance_sources and config.training.class_balance),
            "level_balance": bool(config.site_data and config.training.balance_sources and config.training.level_balance),
            **data_record(dataclasses.asdict(config))}


def data_record(record: dict) -> dict:
    """The data a model was trained on, from its training record or a run's configuration (a site left out by a
    study is part of it: its images were not trained on)."""
    names = {"data": None, "tumor_data": [], "site_data": [], "reviews": [], "leave_out_site": None,
             "init_from": None}
    return {name: list(record.get(name) or []) if isinstance(empty, list) else record.get(name)
            for name, empty in names.items()}


def train_and_decide(config: RetrainConfig, split: Split, started: float,
                     reviews: dict | None = None) -> RetrainOutcome:
    """Stages 4-6 (``reviews``: what radiologists' verdicts gave the candidate, kept in its training record)."""
    version = config.version or registry.new_version()
    members = train_members(config, split.train, split.validation, split.summary, version)
    networks, records = [network for network, _ in members], [record for _, record in members]
    model = assemble(config, networks)
    val_images, val_targets, val_labels, val_uris = column_arrays(split.validation, [IMAGE, TARGET, LABEL, URI])
    val_labels, groups = val_labels.astype(str), origin_groups(split, val_uris)
    raw = ProbabilityPredictor(model)(val_images)
    candidate_metrics, calibration, calibrated = calibrated_evaluation(raw, val_targets, val_labels)
    threshold = calibration["operating_point"]["threshold"]
    candidate_metrics.update(figures_by_source(calibrated, val_labels, groups, threshold))
    current_metrics = evaluate_current(config, split, val_images, val_targets, val_labels, val_uris, groups,
                                       (calibrated, threshold))
    promoted, reason = promotion_decision(candidate_metrics, current_metrics, config.min_macro_f1,
                                          config.source_margin, config.class_margin)
    if config.leave_out_site:
        promoted, reason = False, (f"a leave-one-site-out study (site {config.leave_out_site} kept out): never "
                                   f"promoted; {reason}")
    log_by_source(candidate_metrics, current_metrics)
    candidate_uri = storage.join(config.output, version)
    state = records[0]["state"]  # the first member's training: the card's curves and per-epoch table
    training = {**training_record(config, split.summary, round(time.time() - started, 1)),
                "config": records[0]["config"], "state": state,
                # the slices radiologists' verdicts gave (``training.reviews`` lists the results folders asked for)
                **({"reviewed_examples": reviews} if reviews else {})}
    extra = {}
    if config.architecture.is_ensemble:
        training["members"] = records
        extra["ensemble"] = ensemble_figures(config, networks, raw, val_images, val_targets)
    saved = registry.save_model(model, candidate_uri, version, config.architecture, config.preprocessing,
                                {"validation_metrics": candidate_metrics, "training": training,
                                 "parameters": int(model.count_params()), **calibration, **extra})
    saved = export_and_attach(model, saved, val_images[:ONNX_CHECK_IMAGES])  # ONNX Runtime's backend, parity-checked
    train_images = validation_arrays(split.train)[0]
    saved, detector = attach_ood(model, saved, train_images, val_images, val_labels, groups)
    if split.left_out is not None:
        saved = registry.update_metadata(saved, left_out_site=judge_left_out(model, saved, detector, split))
    else:
        attach_int8(saved, train_images, val_images, val_targets, config.held_out)
    write_candidate_figures(storage.join(candidate_uri, "validation"), version, raw, calibrated, val_targets,
                            candidate_metrics, state["history"])
    write_model_card(candidate_uri)
    registry.record_decision(config.output, version, promoted, reason)
    return RetrainOutcome(version, candidate_uri, promoted, reason, candidate_metrics, current_metrics,
                          split.summary, state, reviews)


def log_by_source(candidate: dict, current: dict | None) -> None:
    for source, new in candidate["by_source"].items():
        old = (current or {}).get("by_source", {}).get(source, {})
        logger.info("validation on %s: sensitivity %s, specificity %s (current model: %s, %s)", source,
                    new["sensitivity"], new["specificity"], old.get("sensitivity"), old.get("specificity"))
    fair = (current or {}).get("both_held_out", {})
    for source, (kept, total) in sorted(fair.get("images", {}).items()):
        mine, theirs = fair["candidate"].get(source, {}), fair["current"].get(source, {})
        logger.info("validation on %s, the %d of %d images whose patients both models held out: sensitivity %s, "
                    "specificity %s (current model: %s, %s)", source, kept, total, mine.get("sensitivity"),
                    mine.get("specificity"), theirs.get("sensitivity"), theirs.get("specificity"))


def judge_left_out(model, info: registry.ModelInfo, detector, split: Split) -> dict:
    """What the candidate does on the site it never saw (:func:`judge_site`)."""
    images, labels, uris = column_arrays(split.left_out, [IMAGE, LABEL, URI])
    return judge_site(model, info, detector, images, labels.astype(str), origin_groups(split, uris),
                      split.summary.sites["left_out"])


def judge_site(model, info: registry.ModelInfo, detector, images: np.ndarray, labels: np.ndarray,
               groups: SourceGroups, site: dict) -> dict:
    """What a model does on one site's slices, as a night would show it (calibrated, at its operating point,
    unfamiliar images unflagged): overall, per sequence and per level in the head. ``site`` names the site and
    counts its patients (``{"site": ..., "patients": ...}``)."""
    probabilities, features = ProbabilityPredictor(model, temperature=info.temperature, features=True
                                                   ).with_features(images)
    unfamiliar = detector.marks(detector.scores(features))
    figures = figures_by_source(probabilities, labels, groups, info.threshold, unfamiliar)
    record = {"site": site["site"], "images": int(len(labels)), "patients": site["patients"],
              "threshold": info.threshold,
              "overall": screening_figures(probabilities, unfamiliar, labels, info.threshold), **figures}
    logger.info("on the left-out site %s: sensitivity %s, specificity %s, %s marked unfamiliar", record["site"],
                record["overall"]["sensitivity"], record["overall"]["specificity"],
                record["overall"]["marked_unfamiliar"])
    return record


def attach_ood(model, info: registry.ModelInfo, train_images: np.ndarray, val_images: np.ndarray,
               val_labels: np.ndarray, groups: SourceGroups | None = None) -> tuple[registry.ModelInfo, object]:
    """Fit the candidate's out-of-distribution detector (``model.ood``) on its training images, with the threshold
    on validation, and store it beside the weights, with the share of each source's validation images it marks
    (another hospital's slices must not be unfamiliar to a model trained on them); ``tools.fit_ood`` measures it
    on images that are not brain MRI."""
    predictor = ProbabilityPredictor(model, features=True)
    _, features = predictor.with_features(train_images)
    _, validation = predictor.with_features(val_images)
    detector, record = fit_and_describe(features, validation, val_labels)
    if groups is not None:
        marked = detector.marks(detector.scores(validation))
        record["validation_marked_by_source"] = {
            str(name): round(float(marked[groups.sequences == name].mean()), 4)
            for name in sorted(set(groups.sequences))}
    logger.info("out-of-distribution threshold %.2f marks %.1f%% of the validation images", detector.threshold,
                100 * record["validation_marked"])
    return registry.attach_file(info, "ood", OOD_FILE, detector.to_bytes(), record), detector


def attach_int8(info: registry.ModelInfo, train_images: np.ndarray, val_images: np.ndarray,
                val_targets: np.ndarray, held_out: tuple[str, ...] = ()) -> registry.ModelInfo:
    """The candidate's int8 export (``model.quantize``), shipped when its validation figures hold, with its verdict
    on the held-out sets (``model.heldout``; ``held_out`` folders each a set); an optional speed-up, so a failure to
    quantize is logged and the candidate goes on without it."""
    try:
        sets = held_out_sets(info.preprocessing, val_images,
                             {f"held-out folder {pathlib.PurePath(folder).name}": folder for folder in held_out})
        return quantize_and_attach(info, train_images, val_images, val_targets, held_out=sets)[0]
    except Exception as error:  # onnxruntime's quantizer on a graph it cannot handle: float32 still serves
        logger.warning("int8 quantization of %s failed (%s: %s); it ships without model.int8.onnx", info.version,
                       type(error).__name__, error)
        return info


def training_hardware(config: TrainConfig) -> str:
    resources = ray.cluster_resources()
    gpus = f", {int(resources['GPU'])} GPUs" if resources.get("GPU") else ""
    device = "one GPU" if config.use_gpu else f"{config.cpus_per_worker:g} CPUs"
    return (f"{config.num_workers} Ray Train worker(s) with {device} each, on a Ray cluster of "
            f"{int(resources.get('CPU', 0))} CPUs{gpus} ({platform.machine()}, no GPU used: {not config.use_gpu})")
