"""Series rule study: how each series rule of ``pipeline.scoring.series.SERIES_RULES`` trades sensitivity for false flags.

    python -m tools.series_rule_study --model models/mri-bilstm-v2 --results /tmp/series-study-out > report.md

(a) Held-out validation slices: the model's validation split is rebuilt from the data and split settings its
``model.json`` records (near-duplicate groups, ``model.dedup.grouped_split``: the same files and seed give the same
images, checked against the recorded counts), each validation image is scored by the model's ONNX export (its
calibration applied), and synthetic series are drawn from them with a fixed seed: no-tumor series of 12-20
no-tumor slices, tumor series of the same lengths where a run of k adjacent slices (k = 1..6) are tumor slices,
and no-tumor series where one slice is replaced by one of the most suspicious no-tumor slices (a noisy frame).
Every rule scores every series at the model's threshold. (b) The sample archive: the series of a results folder
(``jobs.screen`` over ``samples/archive``), read back through ``pipeline.results.views``, as each rule decides them.

Prints a markdown report on stdout (docs/series_rule.md holds one). Part (a) is skipped with a message when the
training data the model recorded (under ``../shared``) is not there; part (b) when no results folder is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import numpy as np

from infra import storage
from model import registry
from model.config import RetrainConfig
from model.data import frame_uri, list_labelled_images
from model.decode import decode_file
from model.dedup import group_near_duplicates, grouped_split, thumbnail
from model.labels import NO_TUMOR, NO_TUMOR_INDEX
from model.onnx_runtime import OnnxPredictor
from model.preprocessing import preprocess_image
from pipeline import schema as col
from pipeline.results import views
from pipeline.scoring.series import SERIES_INPUT_COLUMNS, SERIES_RULE, SERIES_RULES, order_slices, rule_input

logger = logging.getLogger(__name__)

RUN_LENGTHS = tuple(range(1, 7))
NO_TUMOR_CASE, NOISY_CASE = "no tumor", "no tumor + 1 noisy slice"
MATCHED_FALSE_FLAGS = 0.01


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study reads and how many synthetic series it draws."""

    model: str = "models/mri-bilstm-v2"
    results: str | None = None
    seed: int = 0
    series_per_case: int = 2000  # no-tumor, noisy, and tumor series for each run length k
    min_slices: int = 12
    max_slices: int = 20
    noisy_slices: int = 5  # the most suspicious no-tumor validation slices, one of which makes a series noisy


@dataclasses.dataclass(frozen=True)
class ValidationSlices:
    """The validation images' tumor probabilities, split by label."""

    no_tumor: np.ndarray
    tumor: np.ndarray


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def percent(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def decoded_frames(uri: str) -> list[tuple[str, np.ndarray]]:
    """(frame URI, grey frame) of every frame of one labelled file, named as ``model.data`` names them."""
    frames = decode_file(storage.read_bytes(uri), uri).frames
    return [(frame_uri(uri, index, len(frames)), frame) for index, frame in enumerate(frames)]


def validation_split(info: registry.ModelInfo) -> tuple[list[str], np.ndarray]:
    """The model's validation images (frame URIs) and labels, rebuilt as ``pipeline.retrain.split_by_groups``
    built them; raises RuntimeError when the rebuilt split does not match the one the model recorded."""
    training, settings = info.metadata["training"], RetrainConfig(data="", output="")
    images = list_labelled_images(training["data"], tuple(training.get("tumor_data", ())))
    labels_of = {image.uri: image.label for image in images}
    frames = sorted(((uri, thumbnail(frame), labels_of[image.uri]) for image in images
                     for uri, frame in decoded_frames(image.uri)), key=lambda item: item[0])  # by URI, as retrain
    groups = group_near_duplicates(np.stack([thumb for _, thumb, _ in frames]), settings.duplicate_similarity)
    labels = np.array([label for *_, label in frames])
    chosen = grouped_split(groups, labels, settings.validation_fraction, settings.split_seed)
    by_label = dict(zip(*np.unique(labels[chosen], return_counts=True)))
    if {str(k): int(v) for k, v in by_label.items()} != training["split"]["validation_by_label"]:
        raise RuntimeError(f"rebuilt validation split {by_label} differs from the recorded "
                           f"{training['split']['validation_by_label']}: the data or the split code changed")
    return [uri for (uri, *_), keep in zip(frames, chosen) if keep], labels[chosen]


def validation_slices(info: registry.ModelInfo) -> ValidationSlices:
    """Tumor probability (1 - P(no tumor), calibrated) of every validation image, by the model's ONNX export."""
    uris, labels = validation_split(info)
    logger.info("scoring %d validation images", len(uris))
    frames = dict(frame for uri in dict.fromkeys(uri.split("#frame=")[0] for uri in uris)
                  for frame in decoded_frames(uri))
    images = np.stack([preprocess_image(frames[uri], info.preprocessing) for uri in uris])
    tumor_probability = 1.0 - OnnxPredictor.for_model(info)(images)[:, NO_TUMOR_INDEX]
    is_no_tumor = labels == NO_TUMOR
    return ValidationSlices(no_tumor=tumor_probability[is_no_tumor], tumor=tumor_probability[~is_no_tumor])


def no_tumor_series(slices: ValidationSlices, rng: np.random.Generator, config: StudyConfig) -> np.ndarray:
    length = int(rng.integers(config.min_slices, config.max_slices + 1))
    return rng.choice(slices.no_tumor, size=length, replace=False)


def tumor_series(slices: ValidationSlices, run: int, rng: np.random.Generator, config: StudyConfig) -> np.ndarray:
    """A no-tumor series whose slices ``start .. start + run - 1`` are tumor slices."""
    series = no_tumor_series(slices, rng, config)
    start = int(rng.integers(0, len(series) - run + 1))
    series[start:start + run] = rng.choice(slices.tumor, size=run, replace=False)
    return series


def noisy_series(slices: ValidationSlices, noisy: np.ndarray, rng: np.random.Generator,
                 config: StudyConfig) -> np.ndarray:
    """A no-tumor series with one slice replaced by one of the ``noisy`` no-tumor slices."""
    series = no_tumor_series(slices, rng, config)
    series[int(rng.integers(0, len(series)))] = rng.choice(noisy)
    return series


def synthetic_cases(slices: ValidationSlices, noisy: np.ndarray, config: StudyConfig) -> dict[str, list[np.ndarray]]:
    """Case name -> its synthetic series (ordered slice probabilities), all from one seeded generator."""
    rng = np.random.default_rng(config.seed)
    count = range(config.series_per_case)
    cases = {NO_TUMOR_CASE: [no_tumor_series(slices, rng, config) for _ in count],
             NOISY_CASE: [noisy_series(slices, noisy, rng, config) for _ in count]}
    for run in RUN_LENGTHS:
        cases[f"k={run}"] = [tumor_series(slices, run, rng, config) for _ in count]
    return cases


def case_scores(cases: dict[str, list[np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Rule -> case -> the rule's series tumor probability of each series of the case."""
    return {rule: {case: np.array([SERIES_RULES[rule](probabilities).tumor_probability for probabilities in series])
                   for case, series in cases.items()} for rule in SERIES_RULES}


def matched_threshold(no_tumor_scores: np.ndarray, false_flag_rate: float) -> float:
    """The lowest threshold at which at most ``false_flag_rate`` of the no-tumor series flag."""
    ordered = np.sort(no_tumor_scores)
    allowed = int(np.floor(false_flag_rate * len(ordered)))
    return float(np.nextafter(ordered[len(ordered) - allowed - 1], np.inf))


def rule_row(rule: str, scores: dict[str, np.ndarray], threshold: float) -> list[str]:
    """A rule's sensitivity by run length and false-flag rates, at ``threshold``."""
    return [f"**{rule}**" if rule == SERIES_RULE else rule,
            *[percent(float(np.mean(scores[f"k={run}"] >= threshold))) for run in RUN_LENGTHS],
            percent(float(np.mean(scores[NO_TUMOR_CASE] >= threshold))),
            percent(float(np.mean(scores[NOISY_CASE] >= threshold)))]


def matched_row(rule: str, scores: dict[str, np.ndarray], threshold: float) -> list[str]:
    name, *rates = rule_row(rule, scores, threshold)
    return [name, f"{threshold:.4f}", *rates]


def slice_facts(slices: ValidationSlices, noisy: np.ndarray, threshold: float, config: StudyConfig) -> str:
    return (f"Validation slices: {len(slices.tumor)} tumor, {len(slices.no_tumor)} no tumor. Slice level at the "
            f"threshold: tumor slices flagged {percent(float(np.mean(slices.tumor >= threshold)))}, no-tumor slices "
            f"flagged {percent(float(np.mean(slices.no_tumor >= threshold)))} "
            f"({int(np.sum(slices.no_tumor >= threshold))} of {len(slices.no_tumor)}). {config.series_per_case} series "
            f"per column, {config.min_slices}-{config.max_slices} slices each; noisy slices: the {config.noisy_slices} "
            f"most suspicious no-tumor slices ({', '.join(f'{value:.3f}' for value in noisy)}).")


def validation_report(info: registry.ModelInfo, config: StudyConfig) -> str:
    """Part (a): slice-level facts, each rule's series sensitivity by k and false-flag rates at the model's
    threshold, then the same at the threshold that holds each rule to ``MATCHED_FALSE_FLAGS`` on no-tumor series."""
    slices, threshold = validation_slices(info), info.threshold
    noisy = np.sort(slices.no_tumor)[-config.noisy_slices:]
    scores = case_scores(synthetic_cases(slices, noisy, config))
    header = ["rule", *[f"sensitivity k={run}" for run in RUN_LENGTHS], "false flags, no tumor",
              "false flags, 1 noisy slice"]
    matched = {rule: matched_threshold(scores[rule][NO_TUMOR_CASE], MATCHED_FALSE_FLAGS) for rule in SERIES_RULES}
    return "\n".join([
        "## (a) Synthetic series from held-out validation slices", "",
        f"Model {info.version}, threshold {threshold:g}, seed {config.seed}. "
        + slice_facts(slices, noisy, threshold, config), "",
        f"At the model's threshold ({threshold:g}):", "",
        markdown_table(header, [rule_row(rule, scores[rule], threshold) for rule in SERIES_RULES]), "",
        f"At the threshold that holds each rule to at most {percent(MATCHED_FALSE_FLAGS)} false flags on these "
        "no-tumor series (fitted on the same series: in-sample):", "",
        markdown_table(["rule", "threshold", *header[1:]], [matched_row(rule, scores[rule], matched[rule])
                                                             for rule in SERIES_RULES])])


def archive_series(results: str) -> list[tuple[str, np.ndarray]]:
    """(series folder, the rules' input: ordered slice probabilities) of each current series of a results folder."""
    with views.connect(results) as connection:
        frames = connection.sql(f"SELECT {', '.join(SERIES_INPUT_COLUMNS)} FROM current_predictions "
                                f"WHERE {col.SERIES_KEY} IS NOT NULL").df()
    named = []
    for _, frame in frames.groupby(col.SERIES_KEY):
        ordered, _ = order_slices(frame)
        named.append((ordered[col.SOURCE_URI][0].rsplit("/", 2)[-2], rule_input(ordered)))
    return sorted(named, key=lambda item: item[0])


def rule_cells(probabilities: np.ndarray, threshold: float) -> list[str]:
    scores = [SERIES_RULES[rule](probabilities) for rule in SERIES_RULES]
    return [f"{score.tumor_probability:.3f} {'flag' if score.tumor_probability >= threshold else '-'}"
            for score in scores]


def archive_report(results: str, threshold: float, noisy_value: float = 0.53) -> str:
    """Part (b): each sample series' slices and each rule's probability and decision; and the no-tumor series
    with one frame set to ``noisy_value`` (the issue's example), as each rule decides it."""
    rows = []
    for name, probabilities in archive_series(results):
        shown = " ".join("-" if np.isnan(value) else f"{value:.3f}" for value in probabilities)
        rows.append([name, shown, *rule_cells(probabilities, threshold)])
        if "notumor" in name:
            noisy = probabilities.copy()
            noisy[len(noisy) // 2] = noisy_value
            rows.append([f"{name}, one frame set to {noisy_value}", " ".join(f"{value:.3f}" for value in noisy),
                         *rule_cells(noisy, threshold)])
    return "\n".join(["## (b) The sample archive's series", "",
                      f"Results {results}, threshold {threshold:g}; each cell: the rule's series tumor probability and "
                      "whether it flags.", "",
                      markdown_table(["series", "ordered slice probabilities", *SERIES_RULES], rows)])


def study(config: StudyConfig) -> str:
    """The markdown report: part (a) when the model's training data is readable, part (b) when results are given."""
    info = registry.load_model_info(config.model)
    training = info.metadata.get("training", {})
    folders = [training.get("data"), *training.get("tumor_data", [])]
    parts = [f"# Series rule study\n\nChosen rule: `{SERIES_RULE}` (`pipeline.scoring.series.SERIES_RULE`)."]
    if all(folder and storage.is_dir(folder) for folder in folders):
        parts.append(validation_report(info, config))
    else:
        message = (f"the training data the model recorded is not there ({', '.join(map(str, folders))}); the "
                   "validation slices come from it (../shared beside the checkout)")
        logger.warning("part (a) skipped: %s", message)
        parts.append(f"## (a) Synthetic series from held-out validation slices\n\nSkipped: {message}.")
    if config.results:
        parts.append(archive_report(config.results, info.threshold))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=StudyConfig.model, help="model folder")
    parser.add_argument("--results", help="results folder of jobs.screen over samples/archive")
    parser.add_argument("--seed", type=int, default=StudyConfig.seed)
    parser.add_argument("--series", type=int, default=StudyConfig.series_per_case, help="series per case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    config = StudyConfig(model=args.model, results=args.results, seed=args.seed, series_per_case=args.series)
    sys.stdout.write(study(config))


if __name__ == "__main__":
    main()
