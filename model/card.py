"""The model card: ``MODEL_CARD.md`` written from a model's own ``model.json``, so the two cannot disagree.

    python -m model.card --model models/<version> [--ablation-runs <candidate folders> --ablation-summary <text>]
    python -m model.card --model models/<version> --site-studies <leave-one-site-out candidate folders> \
        [--site-studies-summary <text>]

With ``--ablation-runs`` the card tabulates a seeded head ablation (each head, each seed: the best epoch's validation
figures, and each head's mean and spread) and stores it in ``model.json`` too. ``--ablation`` (one run with the other
head, compared epoch by epoch) is how the first models were compared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from infra import storage
from model.architecture import build_classifier
from model.config import ArchitectureConfig
from model.labels import CLASS_NAMES
from model.registry import METADATA_FILE
from model.sources import LEVEL_NAMES
from model.train import STATE_FILE

CARD_FILE = "MODEL_CARD.md"


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def per_class_table(metrics: dict) -> list[str]:
    lines = ["| class | precision | recall | F1 | images |", "| --- | --- | --- | --- | --- |"]
    for name in CLASS_NAMES:
        scores = metrics["per_class"][name]
        lines.append(f"| {name} | {number(scores['precision'])} | {number(scores['recall'])} | "
                     f"{number(scores['f1'])} | {scores['support']} |")
    return lines


def summary_lines(metrics: dict) -> list[str]:
    tumor = metrics["tumor_vs_no_tumor"]
    unknown = metrics.get("unknown_type_tumor_sensitivity", {})
    return [
        f"- Accuracy (four classes): **{percent(metrics['accuracy'])}** on {metrics['known_class_images']} images; "
        f"macro-F1 {number(metrics['macro_f1'])}; macro ROC AUC {number(metrics['roc_auc_macro'])}; "
        f"expected calibration error {number(metrics['expected_calibration_error'])}.",
        f"- Tumor vs no tumor at threshold {number(tumor['threshold'])}: sensitivity **{number(tumor['sensitivity'])}** "
        f"({tumor['tumor_images']} tumor images), specificity {number(tumor['specificity'])} "
        f"({tumor['no_tumor_images']} no-tumor images), ROC AUC {number(tumor['roc_auc'])}.",
        f"- Held-out Br35H tumor slices (tumor of unknown type, another source): sensitivity "
        f"**{number(unknown.get('sensitivity'))}** on {unknown.get('images', 0)} images.",
    ]


HEAD_NAMES = {"bilstm": "column-BiLSTM + pooling head", "lstm": "row-LSTM head", "pooling": "pooling head"}


def head_of(architecture: dict) -> str:
    """The head of a recorded architecture, for model.json written before heads had names too."""
    return ArchitectureConfig.from_dict(architecture).head


def head_name(architecture: dict) -> str:
    return HEAD_NAMES[head_of(architecture)]


def head_description(architecture: dict) -> str:
    units = architecture["lstm_units"]
    return {"bilstm": f"a bidirectional LSTM ({units} units) reading the columns of the stride-16 feature map, "
                      "concatenated with global average pooling of the final feature map",
            "lstm": f"an LSTM ({units} units) reading the feature-map rows",
            "pooling": "global average pooling of the feature map"}[head_of(architecture)]


def ensemble_description(architecture: dict) -> str:
    """How many networks the model averages and which views each reads; empty for a single network."""
    config = ArchitectureConfig.from_dict(architecture)
    if not config.is_ensemble:
        return ""
    views = "the slice and its left-right mirror" if config.mirror_views else "the slice"
    return (f"an ensemble of {config.members} networks trained apart (own seeds), each reading {views}, their "
            f"probabilities averaged; each network: ")


def training_time(training: dict) -> str:
    """Wall-clock time of the run, and for an ensemble the members' own training time in all."""
    run = f"{training['seconds'] / 60:.0f} minutes wall clock including data preparation"
    members = training.get("members")
    if not members:
        return run
    trained = sum(member.get("seconds") or 0 for member in members)
    return f"its members trained for {trained / 60:.0f} minutes in all (below); this run {run}"


def member_lines(training: dict) -> list[str]:
    """One line per member of an ensemble: seed, epochs, best epoch and time (the figures above are the first's)."""
    members = training.get("members")
    if not members:
        return []
    lines = ["- Members (the epochs, speed and per-epoch table here are the first member's):"]
    for index, member in enumerate(members):
        state, config = member["state"], member["config"]
        how = "reused from an earlier run on this split" if member["reused"] else "trained in this run"
        if member.get("init_from"):
            how += f", started from the weights of `{member['init_from'].rstrip('/').rsplit('/', 1)[-1]}`"
        minutes = f", {member['seconds'] / 60:.0f} minutes" if member.get("seconds") else ""
        lines.append(f"  - member {index} (`{member['version']}`, {how}): seed {member['seed']}, "
                     f"{state['next_epoch']} of {config['epochs']} epochs, best epoch {state['best_epoch']} "
                     f"(validation loss {number(state['best_val_loss'])}){minutes}.")
    return lines


def ensemble_section(record: dict) -> list[str]:
    """What each part of an ensemble adds, on validation at 0.5 before calibration."""
    parts = record.get("ensemble")
    if not parts:
        return []
    lines = ["", "## Ensemble: what each part adds", "",
             "Validation figures before calibration, tumor figures at 0.5 (the model's own, calibrated and at its "
             "threshold, are above); each view or member costs one more inference per image.", "",
             "| part | accuracy | macro-F1 | " + " | ".join(f"{name} recall" for name in CLASS_NAMES)
             + " | tumor sensitivity | specificity |",
             "| --- | --- | --- | " + " | ".join("---" for _ in CLASS_NAMES) + " | --- | --- |"]
    for name, figures in parts.items():
        lines.append(f"| {name} | {percent(figures['accuracy'])} | {number(figures['macro_f1'])} | "
                     + " | ".join(number(figures["recall"][label]) for label in CLASS_NAMES)
                     + f" | {number(figures['tumor_sensitivity'])} | {number(figures['specificity'])} |")
    return lines


def history_table(history: list[dict], other: list[dict] | None = None, names: tuple[str, str] = ("", "")) -> list[str]:
    if other is None:
        lines = ["| epoch | train loss | val loss | val accuracy | val macro-F1 | val tumor sensitivity |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for epoch in history:
            lines.append(f"| {epoch['epoch']} | {number(epoch['train_loss'])} | {number(epoch['val_loss'])} | "
                         f"{percent(epoch['val_accuracy'])} | {number(epoch['val_macro_f1'])} | "
                         f"{number(epoch['val_tumor_sensitivity'])} |")
        return lines
    pair = f"{names[0]} / {names[1]}"
    lines = [f"| epoch | val loss {pair} | val accuracy {pair} | val macro-F1 {pair} | val tumor sensitivity {pair} |",
             "| --- | --- | --- | --- | --- |"]
    for mine, theirs in zip(history, other):
        lines.append(f"| {mine['epoch']} | {number(mine['val_loss'])} / {number(theirs['val_loss'])} | "
                     f"{percent(mine['val_accuracy'])} / {percent(theirs['val_accuracy'])} | "
                     f"{number(mine['val_macro_f1'])} / {number(theirs['val_macro_f1'])} | "
                     f"{number(mine['val_tumor_sensitivity'])} / {number(theirs['val_tumor_sensitivity'])} |")
    return lines


def ablation_section(record: dict) -> list[str]:
    ablation = record.get("ablation")
    if not ablation:
        return ["No ablation recorded for this model."]
    theirs_architecture = ablation.get("architecture") or {"use_lstm": ablation["use_lstm"]}
    mine, theirs = head_name(record["architecture"]), head_name(theirs_architecture)
    lines = [ablation.get("summary", ""), "",
             f"Same data, preprocessing, split method, schedule and seed; only the head differs: this model has the "
             f"{mine} "
             f"({record.get('parameters', 0):,} parameters), the other run ({ablation['version']}) the {theirs} "
             f"({ablation['parameters']:,} parameters). Validation metrics per epoch, {mine} / {theirs}:", ""]
    lines += history_table(record["training"]["state"]["history"], ablation["history"], (mine, theirs))
    if ablation.get("validation_metrics"):
        lines += ["", f"The {theirs} run at its best epoch:", ""] + summary_lines(ablation["validation_metrics"])
    return lines


def model_card(record: dict) -> str:
    """The card in the model-card order: intended use and users, factors, metrics, evaluation data and figures,
    training data, limits and caveats, in words a clinician can act on; the engineering record after them."""
    lines = [f"# Model card: {record['version']}", ""]
    lines += intended_use_lines() + factor_lines(record) + metric_lines(record) + evaluation_lines(record)
    lines += training_data_lines(record)
    lines += ["", "## Known limits", ""] + [f"- {limit}" for limit in record.get("known_limits", limits_of(record))]
    lines += ["", "## Caveats and recommendations", ""] + [f"- {caveat}" for caveat in CAVEATS]
    return "\n".join(lines + engineering_lines(record)) + "\n"


def intended_use_lines() -> list[str]:
    return ["## Intended use", "",
            "- **What it does**: reads single 2-D brain MRI slices and gives each a probability of glioma, "
            "meningioma, pituitary tumor and no tumor; the screening job flags slices and series whose tumor "
            "probability reaches the operating point, most suspicious first.",
            "- **Who uses it**: radiologists reading the morning's flagged list and report, to decide which studies "
            "to read first; hospital imaging and data teams who run the nightly screening.",
            "- **What it is not**: a diagnosis. It must not clear a study on its own, and a slice it does not flag "
            "is not a normal slice. Images it marks unfamiliar get no class and no flag: read them as usual."]


def factor_lines(record: dict) -> list[str]:
    """What the figures depend on: the sources, sequences and populations the model was trained and judged on."""
    training = record["training"]
    sources = sorted(record["validation_metrics"].get("by_source", {}))
    lines = ["", "## Factors", "",
             "- **Sources**: every figure below is given per source where the model was trained on more than one, "
             "because a model trained on one source per class learns the source as the class. "
             + (f"Sources: {', '.join(f'`{source}`' for source in sources)}." if sources else
                "This model was trained and validated on one public four-class set and one tumor set only.")]
    if training.get("site_data"):
        lines.append("- **Sequences**: other hospitals' slices come as FLAIR, T1 and T1 post-contrast (`flair`, "
                     "`t1pre`, `t1post`); the four-class set is mostly T1 post-contrast and T2 without sequence "
                     "labels. T2-only series from other hospitals were not part of training or evaluation.")
    lines.append("- **Population**: adult patients of public research sets; no pediatric scans; tumor-free slices of "
                 "other hospitals come from glioma patients (tumor-free at the slice level).")
    return lines


def metric_lines(record: dict) -> list[str]:
    point = record.get("operating_point", {})
    return ["", "## Metrics", "",
            "- **Sensitivity**: the share of tumor slices flagged; **specificity**: the share of tumor-free slices "
            "not flagged; **class recall**: the share of a class's slices given that class. Counted as the "
            "screening job counts them: calibrated probabilities at the operating point.",
            f"- **Operating point**: tumor probability >= {number(point.get('threshold'))}, chosen on validation "
            f"for tumor sensitivity >= {point.get('target_sensitivity', 'n/a')} "
            f"({point.get('chosen_on', 'on the validation split')})."]


def evaluation_lines(record: dict) -> list[str]:
    metrics = record["validation_metrics"]
    lines = ["", "## Evaluation", "", "Validation split, all sources pooled:", ""] + summary_lines(metrics)
    if metrics.get("by_source"):
        lines += ["", "Per source and sequence (validation, at the operating point, before the unfamiliarity check):",
                  ""] + source_table(metrics)
    marked = record.get("ood", {}).get("validation_marked_by_source")
    if marked:
        lines += ["", "Marked unfamiliar (no class, no flag) on validation, by source: "
                  + ", ".join(f"{name} {percent(share)}" for name, share in sorted(marked.items())) + "."]
    lines += site_study_lines(record) + heatmap_lines(record)
    return lines


def source_table(metrics: dict) -> list[str]:
    lines = ["| source | images | sensitivity | specificity | class recall |", "| --- | --- | --- | --- | --- |"]
    rows = {**metrics.get("by_source", {}), **metrics.get("by_sequence", {}), **metrics.get("by_level", {})}
    for name in sorted(rows):
        figures = rows[name]
        recall = ", ".join(f"{label} {number(value)}" for label, value in sorted(figures["class_recall"].items()))
        lines.append(f"| {name} | {figures['images']} | {number(figures['sensitivity'])} | "
                     f"{number(figures['specificity'])} | {recall} |")
    return lines


def site_study_lines(record: dict) -> list[str]:
    """Leave-one-site-out: the same recipe trained without a site and judged on it, each run a row."""
    studies = record.get("site_studies")
    if not studies:
        return ["", "**A hospital it never saw**: not measured for this model (no leave-one-site-out study "
                    "recorded)."]
    lines = ["", "**A hospital it never saw** (leave-one-site-out: the same recipe trained without one site, judged "
                 "on that site's slices at its own operating point, as a night would count them):", "",
             "| left-out site | run | slices | sensitivity | specificity | ROC AUC | unfamiliar | per sequence (sens / "
             "spec) | tumor-free not flagged, by level in the head |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for study in studies:
        overall = study["overall"]
        sequences = "; ".join(f"{name.rsplit(' ', 1)[-1]} {number(values['sensitivity'], 2)} / "
                              f"{number(values['specificity'], 2)}" for name, values in sorted(study["by_sequence"].items()))
        levels = "; ".join(f"{level} {number(values['specificity'], 2)}" for level, values in levels_of(study)
                           if values.get("specificity") is not None) or "not recorded"
        lines.append(f"| {study['site']} | `{study['run']}` | {study['images']} | {number(overall['sensitivity'])} | "
                     f"{number(overall['specificity'])} | {number(overall.get('roc_auc'))} | "
                     f"{percent(overall['marked_unfamiliar'])} | {sequences} "
                     f"| {levels} |")
    summary = record.get("site_studies_summary")
    return lines + (["", summary] if summary else [])


def levels_of(study: dict) -> list[tuple[str, dict]]:
    """A site study's figures per level in the head (``lgg-glioma/HT middle``...), as (level name, figures), lowest
    level first; empty for a study recorded without them."""
    return [(level, values) for level in LEVEL_NAMES for name, values in study.get("by_level", {}).items()
            if name.endswith(" " + level)]


def heatmap_lines(record: dict) -> list[str]:
    study = record.get("heatmap_localisation")
    if not study:
        return []
    return ["", f"**Where the heat maps point**: {study['summary']}" if study.get("summary") else
            f"**Where the heat maps point**: {json.dumps(study)}"]


def training_data_lines(record: dict) -> list[str]:
    training = record["training"]
    split = training["split"]
    lines = ["", "## Training data", "",
             f"- Four-class set: `{training['data']}`; tumor slices of unknown type: "
             f"{', '.join('`' + t + '`' for t in training['tumor_data']) or 'none'}.",
             f"- {split['images']} images; near-duplicate groups (cosine similarity >= 0.99 between mean-centred 32x32 "
             f"thumbnails, transitive): **{split['duplicate_groups']} groups**, {split['groups_with_duplicates']} of "
             f"them holding more than one image.",
             f"- Split: whole groups assigned to folds, label-stratified; validation = one fold: "
             f"{split['validation_images']} images ({json.dumps(split['validation_by_label'])}), training "
             f"{split['train_images']}. No near-duplicate crosses the split."]
    sites = split.get("sites")
    if sites:
        lines += [f"- Other hospitals' slices: {', '.join('`' + t + '`' for t in training.get('site_data', []))}: "
                  f"{sites['images']} slices of {sites['patients']} patients, split by patient (a patient's "
                  f"slices and sequences on one side, near-duplicates joined): {sites['train_images']} for training, "
                  f"{sites['validation_images']} of {sites['validation_patients']} patients for validation "
                  f"({json.dumps(sites['validation_by_source'])})."]
        if sites.get("left_out"):
            left = sites["left_out"]
            lines.append(f"- A study run: site {left['site']} ({left['images']} slices of {left['patients']} "
                         f"patients) was kept out of training and validation and judged on.")
    lines += reviewed_lines(training.get("reviewed_examples"))
    if training.get("init_from"):
        lines.append(f"- Training started from the weights of `{training['init_from']}` (trained here from scratch "
                     f"on the same four-class split, so no validation image is one it trained on).")
    if training["config"].get("balance_sources", True) and sites:
        lines.append("- Each class was drawn evenly from the sources that have it (with replacement, each epoch), "
                     "so no source stands for a class" + (", at the four-class set's class balance."
                                                          if training.get("class_balance") else "."))
        if training.get("level_balance"):
            lines.append("- Within each other hospital's slices, each class was drawn evenly from the thirds of the "
                         "head (skull base, middle, top), so that a slice's level does not stand for its class.")
    return lines


def reviewed_lines(reviews: dict | None) -> list[str]:
    """How many slices radiologists' verdicts added to training (``jobs.retrain --reviews``), and which were left
    out and why."""
    if reviews is None:
        return []
    labels = ", ".join(f"{label} {count}" for label, count in reviews["by_label"].items())
    cases = ", ".join(f"{count} {state}" for state, count in reviews["cases"].items()) or "none"
    dropped = "; ".join(f"{count} {why}" for why, count in reviews["dropped"].items()) or "none"
    return [f"- Radiologists' verdicts in the review app "
            f"({', '.join('`' + results + '`' for results in reviews['results'])}; cases by their latest verdict: "
            f"{cases}): **{reviews['examples']} reviewed slices** trained on{f' ({labels})' if labels else ''}, "
            f"for training only, never validated on. A confirmed flag gave its class, a dismissed flag no tumor; a "
            f"confirmed series labelled its deciding slice, a dismissed series every slice scored. Left out: "
            f"{dropped}."]


def engineering_lines(record: dict) -> list[str]:
    training, metrics = record["training"], record["validation_metrics"]
    state = training["state"]
    architecture, preprocessing = record["architecture"], record["preprocessing"]
    lines = [
        "", "## Engineering record", "",
        f"- Weights: `weights.h5`, sha256 `{record['weights_sha256']}` (checked before every load).",
        *onnx_lines(record),
        f"- Architecture: {ensemble_description(architecture)}MobileNetV3Small backbone trained from scratch (no "
        f"pretrained weights), {head_description(architecture)}, "
        f"softmax over {', '.join(CLASS_NAMES)}; input {preprocessing['image_size']}x{preprocessing['image_size']} "
        f"grey; {record.get('parameters', 0):,} parameters{' in all' if record.get('ensemble') else ''}.",
        f"- Preprocessing (shared with scoring): {json.dumps(preprocessing)}.",
        "", "## Training",
        f"- {training['hardware']}; {training_time(training)}.",
        f"- Epochs run: {state['next_epoch']} of {training['config']['epochs']} planned (best: epoch "
        f"{state['best_epoch']}, validation loss {number(state['best_val_loss'])}); {recipe(training['config'])}; "
        f"augmentation: {augmentation_text(training)}.",
        f"- {loss_text(training['config'])}",
        *throughput_lines(state["history"]),
        *member_lines(training),
        "", "## Validation metrics (best epoch)", "",
    ]
    lines += summary_lines(metrics) + [""] + per_class_table(metrics)
    lines += calibration_lines(record)
    lines += ["", "Per epoch:", ""] + history_table(state["history"], None)
    lines += ["", "Figures in `validation/`: `confusion_matrix.png`, `roc_curves.png`, `reliability.png`, "
                  "`training_curves.png` (each present when the model's training wrote it)."]
    lines += ensemble_section(record)
    lines += ["", "## Head ablation: LSTM or pooling", ""]
    lines += ablation_runs_section(record) if record.get("ablation_runs") else ablation_section(record)
    lines += ood_lines(record)
    return lines


def augmentation_text(training: dict) -> str:
    if training.get("site_data"):
        return ("rotation, zoom, flips, gamma/contrast/brightness, a smooth intensity bias field, blur or sharpening, "
                "noise, down-sampling, JPEG re-compression")
    return "rotation, zoom, flips, gamma/contrast/brightness, blur, noise, down-sampling"


def recipe(config: dict) -> str:
    if "warmup_epochs" not in config:  # trained before the recipe had a warm-up and weight decay
        return (f"Adam, cosine-decayed learning rate from {config['learning_rate']}, batch {config['batch_size']}, "
                f"early stopping patience {config['patience']}")
    return (f"AdamW (weight decay {config['weight_decay']:g}, none on BatchNormalization and biases), learning rate "
            f"warmed up linearly over {config['warmup_epochs']:g} epochs to {config['learning_rate']:g}, then "
            f"cosine-decayed to 1% of it over the planned epochs; batch {config['batch_size']}; early stopping "
            f"patience {config['patience']}; seed {config.get('seed', 0)}")


def loss_text(config: dict) -> str:
    smoothing = config.get("label_smoothing", 0.0)
    text = "Loss: cross-entropy for the four classes; for tumor slices of unknown type, -log(1 - p(no tumor))"
    text += f"; label smoothing {smoothing:g} (mixed with the mean -log p over classes)" if smoothing else ""
    if config.get("tumor_map_weight"):
        text += (f"; plus {config['tumor_map_weight']:g} times the tumor map's cross-entropy (a training-only second "
                 f"output learns the share of each stride-16 cell the tumor covers, from the masks beside the site "
                 f"slices)")
    return text + "."


def throughput_lines(history: list[dict]) -> list[str]:
    rates = [entry["train_images_per_second"] for entry in history if entry.get("train_images_per_second")]
    if not rates:
        return []
    return [f"- Training speed: median {np.median(rates):.0f} images/s per epoch (range {min(rates):.0f}-"
            f"{max(rates):.0f}; augmentation included, validation excluded)."]


def calibration_lines(record: dict) -> list[str]:
    calibration, operating = record.get("calibration"), record.get("operating_point")
    if not calibration or not operating:
        return []
    half = operating["at_threshold_0.5"]
    return [
        "", "## Calibration and the operating point", "",
        f"- Temperature scaling fitted on the validation split: T = {calibration['temperature']:.3f}; expected "
        f"calibration error {number(calibration['expected_calibration_error_before'])} before, "
        f"{number(calibration['expected_calibration_error_after'])} after. The metrics above are of the calibrated "
        f"probabilities, which scoring writes.",
        f"- Flag threshold **{operating['threshold']:.4f}** on the tumor probability, chosen on validation for "
        f"tumor sensitivity >= {operating['target_sensitivity']} ({operating.get('chosen_on', 'on validation')}; "
        f"a screening threshold is lowered to find tumors, not raised): sensitivity "
        f"{number(operating['validation_sensitivity'])}, specificity {number(operating['validation_specificity'])}; "
        f"held-out Br35H tumor slices {number(operating['unknown_type_tumor_sensitivity'])}. At 0.5 (uncalibrated) "
        f"it was sensitivity {number(half['sensitivity'])}, specificity {number(half['specificity'])}. "
        f"`jobs.screen` uses this threshold unless `--threshold` is given.",
        "- The same validation split chose the best epoch, the temperature and the threshold: expect slightly lower "
        "figures on data the project never saw.",
    ]


def ablation_runs_section(record: dict) -> list[str]:
    """The head ablation as measured runs: each arm with several seeds, same split, data and recipe."""
    runs = record["ablation_runs"]
    lines = [record.get("ablation_summary", ""), "",
             "| head | seed | epochs | best val loss | val accuracy | val macro-F1 | tumor sensitivity at 0.5 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        lines.append(f"| {HEAD_NAMES[run['head']]} | {run['seed']} | {run['epochs']} | {number(run['val_loss'])} | "
                     f"{percent(run['val_accuracy'])} | {number(run['val_macro_f1'])} | "
                     f"{number(run['val_tumor_sensitivity'])} |")
    lines += ["", "| head | runs | mean val accuracy | spread (max - min) | mean val macro-F1 |",
              "| --- | --- | --- | --- | --- |"]
    for head in dict.fromkeys(run["head"] for run in runs):
        arm = [run for run in runs if run["head"] == head]
        accuracy = [run["val_accuracy"] for run in arm]
        lines.append(f"| {HEAD_NAMES[head]} | {len(arm)} | {percent(float(np.mean(accuracy)))} | "
                     f"{100 * (max(accuracy) - min(accuracy)):.1f} points | "
                     f"{number(float(np.mean([run['val_macro_f1'] for run in arm])))} |")
    return lines


DEFAULT_LIMITS = (
    "Trained on single 2-D slices of public data sets (JPEG, already windowed); DICOM from a scanner goes through "
    "the same normalisation, but no DICOM series from a hospital was part of training or validation.",
    "Every no-tumor training image comes from one source (Br35H); tumor slices from Br35H were added so the "
    "model cannot call a source 'no tumor', but no-tumor images from other scanners are still unseen.",
    "Validation is a duplicate-aware split of the same sources; accuracy on another hospital's data will be lower.",
    "A series is flagged when two neighbouring slices are both suspicious (docs/series_rule.md); it is not a volumetric model.",
)

SITE_LIMITS = (
    "Meningioma and pituitary tumors were seen from one public source only: on another hospital's scanner their "
    "type, and whether they are flagged, is not measured. Gliomas and tumor-free slices of two other hospitals "
    "were seen.",
    "Other hospitals' tumor-free slices lie mostly at the skull base and the top of the head, their glioma slices "
    "mostly in the middle of the head: the per-source figures above say how far that holds; pituitary tumors at "
    "the skull base are the case to watch.",
    "No pediatric scans, no T2-only or diffusion series from other hospitals, no post-operative brains were part "
    "of training or evaluation.",
    "Single 2-D slices: a series is flagged when two neighbouring slices are both suspicious (docs/series_rule.md); "
    "it is not a volumetric model.",
)

CAVEATS = (
    "Before relying on the flagged list at a new site, score a few nights and compare with the radiologists' reads: "
    "the figures above are from research sets, not from your scanners.",
    "An unfamiliar image (no class, no flag) is one the model was not trained to read; a high tumor probability "
    "on it means nothing either way.",
    "Heat maps show where the model's evidence lies, not the tumor's extent; they are for orientation, not "
    "measurement.",
)


def limits_of(record: dict) -> tuple[str, ...]:
    if not record["training"].get("site_data"):
        return DEFAULT_LIMITS
    measured = level_limit(record.get("site_studies") or [])
    return tuple(measured if limit == SITE_LIMITS[1] and measured else limit for limit in SITE_LIMITS)


def level_limit(studies: list[dict]) -> str | None:
    """The level-of-the-head limit in measured figures, from the leave-one-site-out studies that give them."""
    def flagged(level: str, measure: str) -> list[float]:
        return [1 - values[measure] for study in studies for name, values in levels_of(study)
                if name == level and values.get(measure) is not None]

    base, middle, top = (flagged(level, "specificity") for level in LEVEL_NAMES)
    missed = flagged(LEVEL_NAMES[0], "sensitivity")
    if not (base and middle and top and missed):
        return None

    def span(values: list[float]) -> str:
        low, high = round(100 * min(values)), round(100 * max(values))
        return f"{low}-{high}%" if low != high else f"{low}%"

    return (f"On a hospital it never saw (the leave-one-site-out studies), the model flags tumor-free slices through "
            f"the middle ({span(middle)}) and top ({span(top)}) of the head far more often than those at the skull "
            f"base ({span(base)}), and misses {span(missed)} of the gliomas at the skull base: it has learned where "
            f"in the head a slice lies along with what it shows. On a new scanner, expect false flags on "
            f"mid-brain slices, and do not read an unflagged skull-base slice as clear; pituitary tumors at the skull "
            f"base are the case to watch.")


def onnx_lines(record: dict) -> list[str]:
    onnx = record.get("onnx")
    if not onnx:
        return []
    return [f"- ONNX export for CPU inference: `{onnx['file']}`, sha256 `{onnx['sha256']}` (checked before every "
            f"load), opset {onnx['opset']}; its probabilities differ from TensorFlow's by at most "
            f"{onnx['parity_max_abs_difference']:.1e} on {onnx['parity_images']} check images.", *int8_lines(record)]


def int8_lines(record: dict) -> list[str]:
    int8 = record.get("onnx_int8")
    if not int8:
        return []
    measured = int8["measured"]
    full, quantized = measured["float32"], measured["int8"]
    return [f"- int8 quantization of that export (`jobs.screen --backend onnx-int8`): `{int8['file']}`, sha256 "
            f"`{int8['sha256']}`; static, QDQ, calibrated on {measured['calibration_images']} training images. On "
            f"the validation split, float32 -> int8: accuracy {full['accuracy']:.4f} -> {quantized['accuracy']:.4f}, "
            f"macro-F1 {full['macro_f1']:.4f} -> {quantized['macro_f1']:.4f}, tumor sensitivity "
            f"{full['tumor_sensitivity']:.4f} -> {quantized['tumor_sensitivity']:.4f}, specificity "
            f"{full['specificity']:.4f} -> {quantized['specificity']:.4f}; marked unfamiliar at the float32 threshold "
            f"{full.get('validation_marked_unfamiliar', float('nan')):.3f} -> "
            f"{quantized.get('validation_marked_unfamiliar', float('nan')):.3f}; one thread "
            f"{full['images_per_second_1_thread']:.0f} -> {quantized['images_per_second_1_thread']:.0f} images/s "
            f"(this machine). The operating point and calibration were chosen on float32.", *int8_ood_lines(int8)]


def int8_ood_lines(int8: dict) -> list[str]:
    """The int8 graph's own unfamiliarity threshold, and what it marks, where it was refitted."""
    if "ood_threshold" not in int8:
        return ["- The unfamiliarity threshold was fitted on float32 features and not refitted for int8: "
                "`jobs.screen` picks int8 only when asked (`python -m tools.quantize_onnx --refit-ood` refits it)."]
    lines = [f"- Its unfamiliarity threshold, refitted on int8 features: {int8['ood_threshold']:.2f} (marks "
             f"{percent(int8['ood_validation_marked'])} of the validation images).", *int8_agreement_lines(int8)]
    measured = int8.get("ood_measured")
    if measured:
        sets = "; ".join(f"{name} {percent(values['marked'])} of {values['images']}"
                         for name, values in measured["out_of_distribution_sets"].items())
        lines.append(f"- With it, on images that are not brain MRI: marked {sets}; AUROC against validation "
                     f"{number(measured['auroc_validation_vs_out_of_distribution'])}; the unseen head MRI slice "
                     f"scores {measured['unseen_head_mri_score']:.1f} "
                     f"({'marked' if measured['unseen_head_mri_marked'] else 'not marked'}).")
    return lines


def int8_agreement_lines(int8: dict) -> list[str]:
    """Which graph ``--backend auto`` runs on CPU, and the held-out figures that decided it (``model.agreement``)."""
    judged = int8.get("held_out_agreement")
    if not judged:
        return ["- **Default on CPU: float32 ONNX.** This int8 graph was not measured on held-out data "
                "(`python -m tools.quantize_onnx --judge`), so `--backend auto` does not run it."]
    sets = "; ".join(f"{name}: decisions {percent(figures['decision_agreement'])}, probability within 0.02 "
                     f"{percent(figures['probability_within_tolerance'])} of {figures['images']}"
                     for name, figures in judged["sets"].items() if figures["images"])
    verdict = ("**Default on CPU: this int8 graph**, which met the rule on every set" if judged["earns_default"] else
               f"**Default on CPU: float32 ONNX.** This int8 graph fails the rule on "
               f"{len(judged['failing_sets'])} of {len(judged['sets'])} held-out sets, so `--backend auto` does not "
               f"run it; `--backend onnx-int8` does, after the start-up check")
    return [f"- {verdict}. The rule: {judged['rule']}. Measured against float32 on sets it was not calibrated on: "
            f"{sets}.",
            "- Every int8 predictor is compared with float32 on bundled check slices on the CPU it starts on, and "
            "runs float32 instead (one warning) where they disagree: on x86 CPUs without VNNI (AVX2 only) the "
            "shipped graphs' u8s8 kernels saturate and change most answers there."]


def ood_lines(record: dict) -> list[str]:
    """The out-of-distribution check (``model.ood``): how it scores, its threshold, what it marks, and (once
    ``tools.fit_ood`` has measured it) how well it separates images that are not brain MRI."""
    ood = record.get("ood")
    if not ood:
        return []
    by_label = ", ".join(f"{label} {count}" for label, count in sorted(ood["validation_marked_by_label"].items()))
    lines = ["", "## Out-of-distribution check", "",
             f"- {ood['method']}. Threshold {ood['threshold']:.2f}; `{ood['file']}`, sha256 `{ood['sha256']}`.",
             f"- Marked: {percent(ood['validation_marked'])} of the {ood['validation_images']} validation images (by "
             f"construction of the threshold), {percent(ood['training_marked'])} of the {ood['training_images']} "
             "training images.",
             f"- The validation images it marks, by label: {by_label or 'none'}. A marked image is listed as "
             "unfamiliar, not flagged: a tumor slice marked is one the flag list does not show."]
    if "out_of_distribution_sets" not in ood:
        return lines + ["- Not yet measured on images that are not brain MRI: run `python -m tools.fit_ood`."]
    lines += [f"- AUROC, validation images against all out-of-distribution sets: "
              f"{number(ood['auroc_validation_vs_out_of_distribution'])}.",
              f"- An unseen head MRI slice (matplotlib's s1045.ima) scores {ood['unseen_head_mri_score']:.1f}: "
              f"{'marked' if ood['unseen_head_mri_marked'] else 'not marked'}.", "",
              "| set | images | marked at the threshold | AUROC against validation |", "| --- | --- | --- | --- |"]
    return lines + [f"| {name} | {values['images']} | {percent(values['marked'])} | {number(values['auroc'])} |"
                    for name, values in ood["out_of_distribution_sets"].items()]


def write_model_card(model_dir: str) -> str:
    record = json.loads(storage.read_text(storage.join(model_dir, METADATA_FILE)))
    text = model_card(record)
    storage.write_text(storage.join(model_dir, CARD_FILE), text)
    return text


def attach_ablation(model_dir: str, ablation_dir: str, summary: str) -> None:
    """Record the run with the other head in the model's metadata, then rewrite its card.

    ``ablation_dir`` is that candidate's model folder (a finished run) or a Ray Train checkpoint folder of
    that run (``state.json``: its history so far, when the run was stopped early to compare at equal epochs).
    """
    record = json.loads(storage.read_text(storage.join(model_dir, METADATA_FILE)))
    if storage.exists(storage.join(ablation_dir, METADATA_FILE)):
        other = json.loads(storage.read_text(storage.join(ablation_dir, METADATA_FILE)))
        ablation = {"version": other["version"], "parameters": other.get("parameters", 0),
                    "architecture": other["architecture"],
                    "history": other["training"]["state"]["history"],
                    "validation_metrics": other["validation_metrics"]}
    else:
        state = json.loads(storage.read_text(storage.join(ablation_dir, STATE_FILE)))
        ablation = {"version": "stopped early", "parameters": ablation_parameters(record),
                    "architecture": ablation_architecture(record),
                    "history": state["history"], "validation_metrics": None}
    record["ablation"] = {**ablation, "summary": summary}
    storage.write_text(storage.join(model_dir, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    write_model_card(model_dir)


def ablation_run(model_dir: str) -> dict:
    """One arm-and-seed of a head ablation, from that candidate's model.json: its best epoch's validation figures."""
    other = json.loads(storage.read_text(storage.join(model_dir, METADATA_FILE)))
    state, config = other["training"]["state"], other["training"]["config"]
    best = next(entry for entry in state["history"] if entry["epoch"] == state["best_epoch"])
    return {"version": other["version"], "head": head_of(other["architecture"]), "seed": config.get("seed", 0),
            "epochs": state["next_epoch"], "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
            "val_macro_f1": best["val_macro_f1"], "val_tumor_sensitivity": best["val_tumor_sensitivity"]}


def attach_ablation_runs(model_dir: str, run_dirs: list[str], summary: str) -> None:
    """Record a seeded head ablation (several candidates, same data, split and recipe) in the model's metadata,
    then rewrite its card."""
    record = json.loads(storage.read_text(storage.join(model_dir, METADATA_FILE)))
    record["ablation_runs"] = [ablation_run(run_dir) for run_dir in run_dirs]
    record["ablation_summary"] = summary
    storage.write_text(storage.join(model_dir, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    write_model_card(model_dir)


def ablation_parameters(record: dict) -> int:
    image_size = record["preprocessing"]["image_size"]
    return int(build_classifier(ArchitectureConfig.from_dict(ablation_architecture(record)), image_size).count_params())


def attach_site_studies(model_dir: str, run_dirs: list[str], summary: str) -> None:
    """Record leave-one-site-out study runs (``jobs.retrain --leave-out-site``, the same recipe as this model) in
    the model's metadata, each run's figures on the site it never saw, then rewrite its card."""
    record = json.loads(storage.read_text(storage.join(model_dir, METADATA_FILE)))
    studies = []
    for run_dir in run_dirs:
        run = json.loads(storage.read_text(storage.join(run_dir, METADATA_FILE)))
        if "left_out_site" not in run:
            raise ValueError(f"{run_dir} is not a leave-one-site-out run: its model.json has no left_out_site")
        studies.append({**run["left_out_site"], "run": run["version"],
                        "epochs": run["training"]["state"]["next_epoch"], "seed": run["training"]["config"]["seed"]})
    record["site_studies"], record["site_studies_summary"] = studies, summary
    storage.write_text(storage.join(model_dir, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    write_model_card(model_dir)


def ablation_architecture(record: dict) -> dict:
    """The other arm of a head ablation: pooling for a model with an LSTM head, the column BiLSTM otherwise."""
    other = "pooling" if head_of(record["architecture"]) != "pooling" else "bilstm"
    return {**ArchitectureConfig.from_dict(record["architecture"]).member().to_dict(), "head": other}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ablation", help="model folder, or Ray Train checkpoint folder, of the same recipe "
                                           "trained with the other head")
    parser.add_argument("--ablation-runs", nargs="+", help="model folders of a seeded head ablation (each arm, each "
                                                            "seed, same data, split and recipe)")
    parser.add_argument("--ablation-summary", default="", help="one paragraph: what the LSTM adds, or not")
    parser.add_argument("--site-studies", nargs="+", help="candidate folders of leave-one-site-out runs "
                                                           "(jobs.retrain --leave-out-site) of this model's recipe")
    parser.add_argument("--site-studies-summary", default="", help="one paragraph: what the studies show")
    args = parser.parse_args()
    if args.site_studies:
        attach_site_studies(args.model, args.site_studies, args.site_studies_summary)
    elif args.ablation_runs:
        attach_ablation_runs(args.model, args.ablation_runs, args.ablation_summary)
    elif args.ablation:
        attach_ablation(args.model, args.ablation, args.ablation_summary)
    else:
        write_model_card(args.model)


if __name__ == "__main__":
    main()
