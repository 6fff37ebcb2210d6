"""The model card: ``MODEL_CARD.md`` written from a model's own ``model.json``, so the two cannot disagree.

    python -m model.card --model models/<version> [--ablation-runs <candidate folders> --ablation-summary <text>]

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
        f"- Tumor vs no tumor at threshold {tumor['threshold']}: sensitivity **{number(tumor['sensitivity'])}** "
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
    training, metrics = record["training"], record["validation_metrics"]
    split, state = training["split"], training["state"]
    architecture, preprocessing = record["architecture"], record["preprocessing"]
    lines = [
        f"# Model card: {record['version']}", "",
        f"- Weights: `weights.h5`, sha256 `{record['weights_sha256']}` (checked before every load).",
        *onnx_lines(record),
        f"- Architecture: {ensemble_description(architecture)}MobileNetV3Small backbone trained from scratch (no "
        f"pretrained weights), {head_description(architecture)}, "
        f"softmax over {', '.join(CLASS_NAMES)}; input {preprocessing['image_size']}x{preprocessing['image_size']} "
        f"grey; {record.get('parameters', 0):,} parameters{' in all' if record.get('ensemble') else ''}.",
        f"- Preprocessing (shared with scoring): {json.dumps(preprocessing)}.",
        *ood_lines(record),
        "", "## Intended use",
        "Triage support for screening brain MRI slices: it ranks and flags slices and series for a radiologist's "
        "review. It is not a diagnosis and must not clear a study on its own.",
        "", "## Data",
        f"- Four-class set: `{training['data']}`; tumor slices of unknown type: "
        f"{', '.join('`' + t + '`' for t in training['tumor_data']) or 'none'}.",
        f"- {split['images']} images; near-duplicate groups (cosine similarity >= 0.99 between mean-centred 32x32 "
        f"thumbnails, transitive): **{split['duplicate_groups']} groups**, {split['groups_with_duplicates']} of "
        f"them holding more than one image.",
        f"- Split: whole groups assigned to folds, label-stratified; validation = one fold: "
        f"{split['validation_images']} images ({json.dumps(split['validation_by_label'])}), training "
        f"{split['train_images']}. No near-duplicate crosses the split.",
        "", "## Training",
        f"- {training['hardware']}; {training_time(training)}.",
        f"- Epochs run: {state['next_epoch']} of {training['config']['epochs']} planned (best: epoch "
        f"{state['best_epoch']}, validation loss {number(state['best_val_loss'])}); {recipe(training['config'])}; "
        f"augmentation: rotation, zoom, flips, gamma/contrast/brightness, blur, noise, down-sampling.",
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
    lines += ["", "## Known limits", ""] + [f"- {limit}" for limit in record.get("known_limits", DEFAULT_LIMITS)]
    return "\n".join(lines) + "\n"


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
    return text + (f"; label smoothing {smoothing:g} (mixed with the mean -log p over classes)." if smoothing
                   else ".")


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
        f"tumor sensitivity >= {operating['target_sensitivity']} on typed tumors and on tumors of unknown type each, "
        f"and never above 0.5 (a screening threshold is lowered to find tumors, not raised): sensitivity "
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
    args = parser.parse_args()
    if args.ablation_runs:
        attach_ablation_runs(args.model, args.ablation_runs, args.ablation_summary)
    elif args.ablation:
        attach_ablation(args.model, args.ablation, args.ablation_summary)
    else:
        write_model_card(args.model)


if __name__ == "__main__":
    main()
