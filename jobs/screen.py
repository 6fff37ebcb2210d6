"""Screen an MRI archive (DICOM, JPEG, PNG; local folder, S3 prefix, or a PACS over DICOMweb) into Delta Lake
results tables.

By default a run scores only the files that are new or changed since the output's last runs (nightly use);
--full rescores everything, e.g. after a new model is promoted.

    python -m jobs.screen --input <dir|s3://bucket/prefix> --output <dir|s3://bucket/prefix> [options]
    python -m jobs.screen --input dicomweb+https://pacs.example.org/dicom-web --output ... [--study-date-from ...]

A PACS input is written dicomweb+http:// or dicomweb+https:// and the server's DICOMweb root: its studies of the
study dates (default: the run date) holding a --study-modality (default MR) are searched (QIDO-RS), and each of
their instances is retrieved (WADO-RS) while it is scored, unless the selection rules skip its series on what the
search tells (a CT series is never downloaded). Credentials: --dicomweb-credentials-file, else the environment
variables DICOMWEB_USERNAME and DICOMWEB_PASSWORD, or DICOMWEB_TOKEN; never on the command line.

Embedded, this starts a local Ray; under ``ray job submit`` (or with --address / RAY_ADDRESS) it joins the cluster.
Exit status: 0 when the run completed and committed (bad input files become error rows), 2 when it could not
start (nothing written), 3 when it failed part-way (not committed: every date reads as it did before).
After the commit, the night's HTML report is written to ``<output>/reports/<run_date>/<run_id>.html``
(``pipeline.report.morning``; --no-report skips it); a report that fails leaves the run committed, with a warning.
With --findings-to, each flagged series' finding (or every series', --findings-for all) then goes to a PACS over
DICOMweb, or to a folder, as a DICOM Structured Report of its image's patient and study (``jobs.findings``, which
resends a run's findings); the summary line counts them under ``findings``, and when some were not stored the job
exits with status 4: the run is committed and reported, and only the findings need sending again.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from jobs.findings import (add_findings_options, check_findings_arguments, exit_status, findings_after_commit,
                          findings_options, open_findings)
from jobs.runner import (POSITIVE_INT, POSITIVE_NUMBER, PROBABILITY, HelpFormatter, add_common_options,
                         add_dicomweb_options, iso_date, require_lasting_paths, run_job)
from model.decode import DecodeLimits
from model.registry import DEFAULT_MODEL
from pipeline.dicomweb.delivery import FindingsOptions
from pipeline.dicomweb.destination import Destination
from pipeline.report.morning import publish_run_report
from pipeline.screening import ScreenConfig, ScreeningPlan, prepare, score_and_commit
from model.backends import BACKENDS

logger = logging.getLogger("jobs.screen")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.screen", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--input", action="append", default=[],
                        help="folder, S3 prefix or file, or a PACS's DICOMweb root written "
                             "dicomweb+https://host/dicom-web (or dicomweb+http://; a study, series or instance "
                             "under it: .../studies/<uid>/series/<uid>/instances/<uid>) (repeatable)")
    parser.add_argument("--manifest", action="append", default=[], help="text file listing one input a line")
    parser.add_argument("--output", required=True, help="results folder or S3 prefix")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model or registry folder (default: the shipped model, %(default)s)")
    parser.add_argument("--threshold", type=PROBABILITY, default=None,
                        help="tumor probability at or above which an image or series is flagged (default: the "
                             "model's operating point, chosen on validation for tumor sensitivity >= 0.98)")
    parser.add_argument("--run-date", type=iso_date, help="partition date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--pseudonym-key-file", help="file holding the secret pseudonym key (else PSEUDONYM_KEY)")
    parser.add_argument("--create-pseudonym-key", action="store_true",
                        help="generate a random key into --pseudonym-key-file when it does not exist")
    parser.add_argument("--decode-batch-size", type=POSITIVE_INT, default=ScreenConfig.decode_batch_size,
                        help="files per decode/preprocess task")
    parser.add_argument("--decode-cpus", type=POSITIVE_NUMBER, default=ScreenConfig.decode_cpus,
                        help="CPUs reserved by each decode/preprocess task")
    parser.add_argument("--inference-batch-size", type=POSITIVE_INT, default=ScreenConfig.inference_batch_size,
                        help="images per inference call")
    parser.add_argument("--inference-actors", type=POSITIVE_INT,
                        help="inference actors (default: one per GPU, or by CPUs)")
    parser.add_argument("--inference-cpus", type=POSITIVE_NUMBER, default=ScreenConfig.inference_cpus,
                        help="CPUs per CPU inference actor (also its TensorFlow thread count)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default=ScreenConfig.backend,
                        help="inference backend: auto = on CPU actors the model's float32 ONNX export (its int8 "
                             "graph only where it earned the default: float32's answers on held-out images, as its "
                             "model card says); TensorFlow on GPUs")
    parser.add_argument("--mirror-average", action="store_true",
                        help="average each image's probabilities with its left-right mirror's: twice the inference, "
                             "+0.6 points validation accuracy for mri-bilstm-v2 (its model card); a model that "
                             "averages its mirror in its own graph, as the shipped ensemble does, needs nothing more")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--use-gpu", dest="use_gpu", action="store_true", default=None,
                     help="score on GPU actors, one GPU each (default: when the cluster has GPUs)")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="score on CPU actors even with GPUs")
    limits = DecodeLimits()
    parser.add_argument("--max-file-mb", type=POSITIVE_NUMBER, default=limits.max_file_bytes / 2**20,
                        help="files larger than this become file_too_large error rows, unread")
    parser.add_argument("--max-pixels", type=POSITIVE_INT, default=limits.max_pixels_per_frame,
                        help="frames with more pixels than this (from the header) become image_too_large rows")
    parser.add_argument("--max-frames", type=POSITIVE_INT, default=limits.max_frames,
                        help="DICOM objects with more frames than this become image_too_large rows")
    parser.add_argument("--full", action="store_true",
                        help="score every listed file; by default a run scores only files that are new or changed "
                             "(size or modification time) since a completed run of another date scored them")
    parser.add_argument("--rescore-on-model-change", action="store_true",
                        help="also rescore unchanged files whose results come from another model than this run's")
    parser.add_argument("--selection-rules", metavar="FILE|all",
                        help="YAML rules choosing which DICOM objects are brain MRI and scored; the others are "
                             "recorded as skipped with the reason (default: pipeline/sources/selection_rules.yaml; 'all' "
                             "scores every image object)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="record a run even when the input holds no files (it replaces the date's results); "
                             "without it an empty input is refused with exit status 2")
    parser.add_argument("--pseudonymize-paths", action="store_true",
                        help="store each file's source_uri with the names of its folders below the input folder "
                             "replaced by keyed pseudonyms (d-<16 hex digits>; the file name stays), for export "
                             "folders named after patients; jobs.query path finds the real path with the key")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="write no HTML report after the commit (rebuild one later with jobs.query report)")
    add_pacs_options(parser)
    add_findings_options(parser)
    add_common_options(parser)
    return parser


def add_pacs_options(parser: argparse.ArgumentParser) -> None:
    pacs = parser.add_argument_group("PACS inputs (dicomweb+http:// or dicomweb+https://)")
    pacs.add_argument("--study-date-from", type=iso_date, metavar="YYYY-MM-DD",
                      help="search the PACS for studies of this date or later (default: the run date)")
    pacs.add_argument("--study-date-to", type=iso_date, metavar="YYYY-MM-DD",
                      help="and of this date or earlier (default: the run date, or --study-date-from when later)")
    pacs.add_argument("--study-modality", action="append", type=modality_code, metavar="CODE",
                      help="search for studies holding this modality (repeatable; default: MR); their series of "
                           "other modalities are listed, and skipped by the selection rules without being retrieved")
    add_dicomweb_options(pacs)
    pacs.add_argument("--dicomweb-max-connections", type=POSITIVE_INT, metavar="N",
                      default=ScreenConfig.dicomweb_max_connections,
                      help="requests to the PACS at once, per process (a scoring actor, a decoding task, the "
                           "driver's search): a cluster of n actors sends at most n times this")
    pacs.add_argument("--dicomweb-requests-per-second", type=POSITIVE_NUMBER, metavar="RATE",
                      help="at most this many requests a second to the PACS, per process (default: no limit but "
                           "--dicomweb-max-connections)")


def modality_code(text: str) -> str:
    """An argparse type: a DICOM modality code such as MR."""
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", code):
        raise argparse.ArgumentTypeError(f"must be a DICOM modality code such as MR or CT, got {text!r}")
    return code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.input and not args.manifest:
        parser.error("give at least one --input or --manifest")
    if args.study_date_from and args.study_date_to and args.study_date_from > args.study_date_to:
        parser.error(f"--study-date-from {args.study_date_from} is after --study-date-to {args.study_date_to}")
    require_lasting_paths(parser, args, "--output", "--pseudonym-key-file")
    check_findings_arguments(parser, args)
    return args


def build_config(args: argparse.Namespace) -> ScreenConfig:
    return ScreenConfig(inputs=tuple(args.input), manifests=tuple(args.manifest), output=args.output,
                        model=args.model, threshold=args.threshold, run_date=args.run_date,
                        pseudonym_key_file=args.pseudonym_key_file, create_pseudonym_key=args.create_pseudonym_key,
                        decode_batch_size=args.decode_batch_size, decode_cpus=args.decode_cpus,
                        inference_batch_size=args.inference_batch_size, inference_actors=args.inference_actors,
                        inference_cpus=args.inference_cpus, use_gpu=args.use_gpu,
                        limits=DecodeLimits(max_file_bytes=int(args.max_file_mb * 2**20),
                                            max_pixels_per_frame=args.max_pixels, max_frames=args.max_frames),
                        allow_empty=args.allow_empty, full=args.full, backend=args.backend,
                        rescore_on_model_change=args.rescore_on_model_change,
                        selection_rules=args.selection_rules, mirror_average=args.mirror_average,
                        pseudonymize_paths=args.pseudonymize_paths,
                        dicomweb_credentials_file=args.dicomweb_credentials_file,
                        dicomweb_ca_bundle=args.dicomweb_ca_bundle,
                        dicomweb_max_connections=args.dicomweb_max_connections,
                        dicomweb_requests_per_second=args.dicomweb_requests_per_second,
                        study_date_from=args.study_date_from, study_date_to=args.study_date_to,
                        study_modalities=tuple(args.study_modality or ScreenConfig.study_modalities))


def prepare_night(args: argparse.Namespace) -> tuple[ScreeningPlan, FindingsOptions | None, Destination | None]:
    """The findings' destination checked first (a PACS refusing the credentials stops the job within seconds), then
    the run's plan."""
    findings = findings_options(args)
    destination = open_findings(findings, tuple(args.input))
    return prepare(build_config(args)), findings, destination


def screen(plan: ScreeningPlan, report: bool = True, findings: FindingsOptions | None = None,
           destination: Destination | None = None) -> dict:
    record = score_and_commit(plan)
    logger.info("run %s done: %d files listed, %d unchanged, %d rows (%d scored, %d unfamiliar, %d errors %s, "
                "%d skipped %s), %d flagged images, %d series (%d flagged); scored at %.1f images/s in %.0f s, "
                "%.0f s in all; results in %s",
                record.run_id, record.files_listed, record.files_unchanged, record.rows_written, record.rows_scored,
                record.rows_ood, record.rows_error, record.errors_by_code, record.rows_skipped,
                record.skipped_by_reason, record.rows_flagged, record.series, record.series_flagged,
                record.scoring_images_per_second, record.scoring_seconds, record.duration_seconds, record.output)
    report_uri = (publish_run_report(record.output, record.run_id, record.rows_flagged > 0, plan.pseudonym_key,
                                     plan.pacs) if report else None)
    return {**record.summary(), "report": report_uri,
            "findings": findings_after_commit(record.output, record.run_id, findings, destination,
                                              plan.pseudonym_key, plan.pacs)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job("screen", args, prepare_night, lambda prepared: screen(prepared[0], args.report, *prepared[1:]),
                   lazy_ray=True, exit_status=exit_status)


if __name__ == "__main__":
    sys.exit(main())
