r"""Retrain the classifier with Ray Train and promote it if it is not worse than the current model; or, with
--folds K, cross-validate the training recipe on K duplicate-aware folds.

    python -m jobs.retrain --data <labelled dir|s3://...> --output <registry dir|s3://...> \
        [--tumor-data <dir>] [--site-data <dir>] [--reviews <results dir>] [--leave-out-site SITE] \
        [--init-from MODEL_DIR] \
        [--num-workers N] [--use-gpu] [--epochs N] [--members N] [--no-mirror-views] \
        [--member-model MODEL_DIR] [--folds K] [--resume-from CHECKPOINT]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from infra import storage
from jobs.runner import (POSITIVE_INT, POSITIVE_NUMBER, HelpFormatter, add_common_options, bounded,
                         require_lasting_paths, run_job)
from model.config import HEADS, ArchitectureConfig, RetrainConfig, TrainConfig
from model.data import DEFAULT_CACHE, DatasetError, LabelledImage, list_training_images, names_site
from model.preprocessing import PreprocessConfig

logger = logging.getLogger("jobs.retrain")

SHIPPED_MEMBERS = 2  # the shipped model's ensemble: scheduled retraining makes a candidate of its kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.retrain", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="labelled folder: one sub-folder per class")
    parser.add_argument("--output", required=True, help="model registry folder (local or s3://)")
    parser.add_argument("--tumor-data", action="append", default=[],
                        help="folder of tumor images of unknown type (repeatable), e.g. Br35H 'yes'")
    parser.add_argument("--site-data", action="append", default=[], metavar="DIR",
                        help="labelled slices from other hospitals (repeatable): class folders (some classes only) "
                             "holding sequence folders of <patient>_<slice> images, and optionally a slices.csv "
                             "naming each patient's site; split by patient, reported per site and sequence")
    parser.add_argument("--reviews", action="append", default=[], metavar="RESULTS_DIR",
                        help="a results folder (local or s3://) whose radiologists' verdicts in the review app become "
                             "training examples (repeatable): each case by its latest verdict; a confirmed flag is "
                             "its class (the reviewer's correction, else the model's), a dismissed flag no tumor, "
                             "unsure and reopened cases are skipped; a confirmed series labels its deciding slice, a "
                             "dismissed series every slice scored. Read from their source files as scoring reads "
                             "them, as source reviews/<folder name>, for training only: a near-duplicate of a "
                             "validation image, and a file that can no longer be read, are left out and counted "
                             "(model.json training.reviewed_examples, the model card)")
    parser.add_argument("--pseudonym-key-file",
                        help="with --reviews: the pseudonym key the screening runs used (else PSEUDONYM_KEY), "
                             "needed for verdicts on images outside a series and for pseudonymised folders")
    parser.add_argument("--leave-out-site", metavar="SITE",
                        help="a study, never promoted: keep one site of the site data out of training and validation "
                             "and judge the candidate on it (its figures are recorded as left_out_site)")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="start each network from this model's weights (one trained on the same --data and "
                             "--tumor-data split, and the same --site-data split if it trained on that, so no "
                             "validation image is one it trained on); the schedule starts afresh")
    parser.add_argument("--source-margin", type=bounded(float, 0, 1), default=RetrainConfig.source_margin,
                        help="promotion also needs every source's validation sensitivity and specificity within "
                             "this margin of the current model's")
    parser.add_argument("--class-margin", type=bounded(float, 0, 1), default=RetrainConfig.class_margin,
                        help="and every source's class recall (images of a class typed as that class) within this "
                             "margin of the current model's")
    parser.add_argument("--no-balance-sources", dest="balance_sources", action="store_false",
                        help="draw training images uniformly instead of each class evenly from its sources")
    parser.add_argument("--class-balance", action="store_true",
                        help="also draw each class at the --data folder's class share rather than its share of all "
                             "the images (measured: more meningiomas typed right, fewer gliomas, and a lower "
                             "specificity on the four-class set; docs/retraining.md)")
    parser.add_argument("--level-balance", action="store_true",
                        help="also spread each class of another hospital's slices evenly over the thirds of the head "
                             "(skull base, middle, top) they lie in, so a slice's level does not stand for its class")
    parser.add_argument("--epochs", type=POSITIVE_INT, default=TrainConfig.epochs,
                        help="planned epochs: the learning-rate schedule decays over exactly these")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=TrainConfig.batch_size, help="global batch size")
    parser.add_argument("--learning-rate", type=POSITIVE_NUMBER, default=TrainConfig.learning_rate,
                        help="peak learning rate of AdamW, reached after the warm-up")
    parser.add_argument("--warmup-epochs", type=bounded(float, 0), default=TrainConfig.warmup_epochs,
                        help="epochs of linear learning-rate warm-up")
    parser.add_argument("--weight-decay", type=bounded(float, 0), default=TrainConfig.weight_decay,
                        help="AdamW decoupled weight decay (not applied to BatchNormalization or biases)")
    parser.add_argument("--label-smoothing", type=bounded(float, 0, 1, high_open=True),
                        default=TrainConfig.label_smoothing, help="label smoothing of the training loss")
    parser.add_argument("--seed", type=bounded(int, 0), default=TrainConfig.seed,
                        help="training seed (weights, shuffling)")
    parser.add_argument("--ema-decay", type=bounded(float, 0, 1, high_open=True), default=TrainConfig.ema_decay,
                        help="decay of the exponential moving average of the weights that validation, checkpoints "
                             "and the candidate use (0: no average)")
    parser.add_argument("--resume-from", metavar="CHECKPOINT",
                        help="continue an interrupted run from one of its checkpoint folders (local or s3://, under "
                             "--storage-path): weights, optimizer moments, schedule step, weight average, history")
    parser.add_argument("--patience", type=POSITIVE_INT, default=TrainConfig.patience,
                        help="epochs without validation-loss improvement before stopping")
    parser.add_argument("--num-workers", type=POSITIVE_INT, default=1, help="Ray Train workers (data parallel)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--cpus-per-worker", type=POSITIVE_NUMBER, default=TrainConfig.cpus_per_worker,
                        help="CPUs each worker reserves (also its TensorFlow thread count)")
    parser.add_argument("--image-size", type=bounded(int, 32, what=" pixels (the backbone needs 32)"),
                        default=PreprocessConfig.image_size, help="side of the square model input, in pixels")
    parser.add_argument("--head", choices=HEADS, default=ArchitectureConfig.head,
                        help="bilstm: a bidirectional LSTM over the feature-map columns beside global pooling (the "
                             "CNN+LSTM); pooling: global average pooling; lstm: an LSTM over the rows alone")
    parser.add_argument("--members", type=POSITIVE_INT, default=SHIPPED_MEMBERS,
                        help="networks trained one after another (seeds --seed, --seed + 1, ...) whose probabilities "
                             "the model averages; 1 makes a single network")
    parser.add_argument("--mirror-views", action=argparse.BooleanOptionalAction, default=True,
                        help="each network also reads the slice's left-right mirror, averaged in (twice the "
                             "inference at scoring)")
    parser.add_argument("--member-model", action="append", default=[], metavar="MODEL_DIR",
                        help="a model folder trained on this data and split (an earlier run's <version>-member<i>, "
                             "a one-network candidate, or an ensemble: each of its networks) reused as the next "
                             "member(s) instead of training them (repeatable)")
    parser.add_argument("--validation-fraction", type=bounded(float, 0, 1, low_open=True, high_open=True),
                        default=RetrainConfig.validation_fraction,
                        help="share of near-duplicate groups held out for validation")
    parser.add_argument("--min-macro-f1", type=bounded(float, 0, 1), default=RetrainConfig.min_macro_f1,
                        help="quality floor: a first model (empty registry) below this validation macro-F1 is not "
                             "promoted")
    parser.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    parser.add_argument("--tumor-map-weight", type=bounded(float, 0), default=TrainConfig.tumor_map_weight,
                        metavar="W", help="also teach the network where tumors are, from the masks beside site "
                        "slices (glioma/mask/), with this weight on that loss (0: off)")
    parser.add_argument("--intensity-curves", type=bounded(float, 0, 1), default=TrainConfig.intensity_curves,
                        metavar="SHARE",
                        help="give this share of training slices a random intensity curve (each tissue another "
                             "brightness, as another sequence would give it); measured in docs/retraining.md")
    parser.add_argument("--spectrum-mix", type=bounded(float, 0, 1), default=TrainConfig.spectrum_mix,
                        metavar="SHARE",
                        help="give this share of training slices the coarse look (low-frequency Fourier amplitudes) "
                             "of another slice of its batch, keeping its anatomy; docs/retraining.md")
    parser.add_argument("--healthy-mirror", type=bounded(float, 0, 1), default=TrainConfig.healthy_mirror,
                        metavar="SHARE",
                        help="with --tumor-map-weight: turn this share of the training slices whose tumor mask lies "
                             "in one half of the head into tumor-free slices (the healthy half and its mirror "
                             "image); docs/retraining.md")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", default=DEFAULT_CACHE,
                       help="folder (local or s3://) keeping decoded, preprocessed training images between runs, "
                            "keyed by the files and the preprocessing parameters; on a cluster give an s3:// folder "
                            "(a local one is not used there)")
    cache.add_argument("--no-cache", dest="cache", action="store_const", const=None,
                       help="decode and preprocess every image again")
    parser.add_argument("--held-out", action="append", default=[], metavar="DIR",
                        help="local folder of MRI not used for training (another hospital's slices, another sequence; "
                             "repeatable): the int8 graph is held to float32's answers on it, beside the validation "
                             "variants, the sample archive and pydicom's non-MR images, before `--backend auto` may "
                             "run it")
    parser.add_argument("--storage-path", help="where Ray Train keeps checkpoints (default: ~/ray_results)")
    parser.add_argument("--version", help="name of the candidate model (default: timestamped)")
    parser.add_argument("--folds", type=bounded(int, 2), metavar="K",
                        help="cross-validate the recipe instead of making a candidate: train K times on K "
                             "duplicate-aware folds and report each figure's mean and spread (written under "
                             "<output>/cross_validation/; no model is kept)")
    add_common_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_lasting_paths(parser, args, "--output", "--cache", "--pseudonym-key-file")
    if args.folds and (args.site_data or args.reviews or args.leave_out_site or args.init_from):
        parser.error("--folds cross-validates the folder-per-class data alone: leave out --site-data, --reviews, "
                     "--leave-out-site and --init-from")
    if args.leave_out_site and not args.site_data:
        parser.error("--leave-out-site needs --site-data: the site it keeps out is one of the site data's")
    if args.healthy_mirror and not args.tumor_map_weight:
        parser.error("--healthy-mirror needs --tumor-map-weight: the tumor masks say which half of a slice is "
                     "healthy, and training reads them only with that option")
    if args.healthy_mirror and args.no_augment:
        parser.error("--healthy-mirror is part of the augmentation, which --no-augment switches off")
    if len(args.member_model) > args.members:
        parser.error(f"--member-model given {len(args.member_model)} times for --members {args.members}")
    return args


def usable_cache(args: argparse.Namespace) -> str | None:
    """The cache folder, unless it is a local path while the job joins a cluster: workers on other nodes could not
    read it there (give an ``s3://`` cache on a cluster)."""
    joins_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if args.cache and joins_cluster and not storage.is_s3(args.cache):
        logger.warning("preprocessed-image cache %s is a local path and this job joins a cluster: not using it "
                       "(pass an s3:// --cache to keep preprocessed images between cluster runs)", args.cache)
        return None
    return args.cache


def build_config(args: argparse.Namespace) -> RetrainConfig:
    training = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           patience=args.patience, warmup_epochs=args.warmup_epochs,
                           weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed,
                           num_workers=args.num_workers, use_gpu=args.use_gpu,
                           cpus_per_worker=args.cpus_per_worker, augment=not args.no_augment,
                           intensity_curves=args.intensity_curves, spectrum_mix=args.spectrum_mix,
                           healthy_mirror=args.healthy_mirror,
                           tumor_map_weight=args.tumor_map_weight,
                           storage_path=args.storage_path, ema_decay=args.ema_decay, resume_from=args.resume_from,
                           balance_sources=args.balance_sources, class_balance=args.class_balance,
                           level_balance=args.level_balance)
    return RetrainConfig(data=args.data, output=args.output, tumor_data=tuple(args.tumor_data),
                         validation_fraction=args.validation_fraction, min_macro_f1=args.min_macro_f1,
                         architecture=ArchitectureConfig(head=args.head, members=args.members,
                                                         mirror_views=args.mirror_views),
                         member_models=tuple(args.member_model),
                         preprocessing=PreprocessConfig(image_size=args.image_size), training=training,
                         version=args.version, cache=usable_cache(args), held_out=tuple(args.held_out),
                         site_data=tuple(args.site_data), reviews=tuple(args.reviews),
                         leave_out_site=args.leave_out_site,
                         init_from=args.init_from, source_margin=args.source_margin,
                         class_margin=args.class_margin)


def check_data(args: argparse.Namespace) -> tuple:
    """Before Ray starts: the configuration is valid, the labelled folders are usable, and the verdicts of the
    ``--reviews`` folders are read (the plan: configuration, labelled images and, with ``--reviews``, the reviewed
    slices)."""
    config = build_config(args)
    for location in (config.data, *config.tumor_data, *config.site_data, *config.reviews, *config.held_out,
                     config.output, *([config.init_from] if config.init_from else [])):
        storage.check_reachable(location)
    images = list_training_images(config.data, config.tumor_data, config.site_data)
    sites = sorted({image.source for image in images if image.patient})
    if config.leave_out_site and not any(names_site(source, config.leave_out_site) for source in sites):
        raise DatasetError(f"--leave-out-site {config.leave_out_site}: the site data's sources are "
                           f"{', '.join(sites) or 'none'}")
    if config.training.tumor_map_weight and not any(image.mask for image in images):
        raise DatasetError("--tumor-map-weight: none of the labelled images has a tumor mask (a class folder's "
                           "mask/ sub-folder, named as its slices, as --site-data folders have)")
    if not config.reviews:
        return config, images
    from pipeline.pseudonym import load_key
    from pipeline.review.examples import read_all_reviews

    return config, images, read_all_reviews(config.reviews, load_key(args.pseudonym_key_file))


def run_cross_validation(plan: tuple[RetrainConfig, list[LabelledImage]], folds: int) -> dict:
    from pipeline.crossval import cross_validate  # TensorFlow loads here, after the arguments are known to be good

    report = cross_validate(plan[0], folds, plan[1])
    for name, figure in report["summary"].items():
        logger.info("%s over %d folds: %.4f +- %.4f (%.4f to %.4f)", name, folds, figure["mean"], figure["std"],
                    figure["min"], figure["max"])
    return {"folds": folds, "report": report["uri"], "summary": report["summary"]}


def run_retraining(plan: tuple) -> dict:
    from pipeline.retrain import retrain  # TensorFlow loads here, after the arguments are known to be good

    outcome = retrain(*plan)
    metrics = outcome.candidate_metrics
    logger.info("candidate %s at %s: accuracy %.4f, macro-F1 %.4f, tumor sensitivity %.4f; %s: %s",
                outcome.version, outcome.candidate_uri, metrics["accuracy"], metrics["macro_f1"],
                metrics["tumor_vs_no_tumor"]["sensitivity"], "PROMOTED" if outcome.promoted else "NOT promoted",
                outcome.reason)
    summary = {"version": outcome.version, "promoted": outcome.promoted, "reason": outcome.reason,
               "candidate": outcome.candidate_uri, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    reviews = outcome.reviews
    if reviews is not None:
        summary["reviewed_examples"], summary["reviewed_left_out"] = reviews["examples"], reviews["dropped"]
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = (lambda plan: run_cross_validation(plan, args.folds)) if args.folds else run_retraining
    return run_job("retrain", args, check_data, run, dashboard=True)


if __name__ == "__main__":
    sys.exit(main())
