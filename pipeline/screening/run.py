"""Screening an MRI archive: the whole scoring run, stage by stage.

1. Resolve the model once (registry -> model folder, sha256 checked), check that S3 endpoints and PACS answer (a
   PACS that refuses the credentials stops the run here), the output is a results output this version writes,
   outside every input folder, no other run holds it, it is writable and the pseudonym key is there: ``prepare``,
   before Ray starts and before any work.
2. List the inputs with size and modification time (``pipeline.sources.listing``; a PACS's instances by its searches),
   streamed to Parquet in a local workspace; an empty input is refused unless the run asks for an empty run. Take the
   output's lock
   (``pipeline.results.run_lock``), finish any earlier run's interrupted commit, and choose the files to score: by default
   only those new or changed since a complete run of another date scored them (``choice.select_files``, a query joining
   the listing with the results tables); ``full`` scores all. A re-run of a date carries over the rows of the
   files its standing run already scored, unchanged and with this model: copied as this run's (``choice.carry_over``).
3. Decode and preprocess (``pipeline.scoring.stages.decode_and_preprocess``, placed by ``scoring``): on CPU tasks when the cluster has GPUs, else
   in the scoring actors themselves.
4. Score on actors, GPU when the cluster has GPUs (``pipeline.scoring.stages.ScoringActor``), each loading the model
   folder resolved in stage 1 and refusing other weights; the flag threshold is the model's operating point unless
   the run sets one.
5. Stream the scored rows (``scoring.stage_predictions``) to the run's work folder (Parquet, ``pipeline.schema.PREDICTIONS_SCHEMA``), logging
   progress.
6. Summarise every DICOM series the run touched, from its rows and the series' earlier rows (``pipeline.scoring.series``),
   streamed in series order from a query over the staged rows (``summary.write_series``); count the run's outcomes with
   another (``summary.count_outcomes``).
7. Stage the run's ``runs`` row and commit predictions -> series -> runs, one Delta transaction each
   (``pipeline.results.tables``: a run counts completely or not at all).
The whole archive streams: through files and queries in the driver, through Ray Data on the cluster. The driver
holds no archive-sized list: its queries are bounded by DuckDB's limit (``summary.DUCKDB_MEMORY``), and only the Delta
commit still grows, about 0.2 KB a row (docs/benchmarks.md, "Driver memory"). Ray retries the work of a decoding task
or an inference actor whose process dies; a fault that survives the retries fails the run before its commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import tempfile
import time
import uuid

import duckdb
import pyarrow as pa

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from pipeline.results import run_lock, tables, views
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from pipeline.dicomweb.client import DicomwebConfigError
from pipeline.sources.listing import Listing, check_reachable, refuse_output_inside_inputs, stage_listing
from pipeline.sources.pacs import PacsOptions
from pipeline.pseudonym import PseudonymKeyError
from pipeline.sources.selection import SelectionRules, SelectionRulesError, load_rules
from model.backends import ONNX_EXPORT_OF
from pipeline.scoring.stages import StageContext
from pipeline.screening.choice import Selection, carry_over, select_files
from pipeline.screening.config import ScreenConfig, pacs_options, path_pseudonymizer, resolve_key
from pipeline.screening.record import RunRecord, run_record
from pipeline.screening.scoring import predictions_dataset, stage_predictions
from pipeline.screening.summary import run_connection, summarise

logger = logging.getLogger(__name__)


def choose_files(plan: "ScreeningPlan", connection: duckdb.DuckDBPyConnection, run_date: str) -> Selection:
    """``select_files`` for a planned run: its staged listing against what the tables knew before ``run_date`` and
    what its standing run holds, the verdicts written to its workspace."""
    connection.register("listing", plan.listing.batches())
    stored_uri = "{}"
    paths = path_pseudonymizer(plan.config, plan.pseudonym_key)
    if paths:
        connection.create_function("stored_path", lambda uris: pa.array([paths(uri) for uri in uris.to_pylist()],
                                                                         pa.string()),
                                   ["VARCHAR"], "VARCHAR", type="arrow")
        stored_uri = "stored_path({})"
    return select_files(plan.config, connection, "listing", views.scored_files(run_date), plan.model.weights_sha256,
                        os.path.join(plan.workspace.name, "verdicts.parquet"), stored_uri,
                        views.standing_files(run_date))


@dataclasses.dataclass(frozen=True)
class ScreeningPlan:
    """What stages 1-2 settled before any work: the resolved model, the staged listing, the key. Needs no Ray.
    ``workspace`` (a local temporary folder holding the listing) is removed when the run ends."""

    config: ScreenConfig
    model: registry.ModelInfo
    listing: Listing
    pseudonym_key: bytes | None = dataclasses.field(repr=False)
    selection: SelectionRules
    workspace: tempfile.TemporaryDirectory = dataclasses.field(repr=False, compare=False)
    pacs: PacsOptions | None = dataclasses.field(default=None, repr=False)  # how PACS inputs are searched and read


def prepare(config: ScreenConfig) -> ScreeningPlan:
    """Stages 1-2: everything that can stop the run, checked before Ray starts and before anything is written to
    the output (the listing goes to a local temporary folder)."""
    workspace = tempfile.TemporaryDirectory(prefix="mri-screen-")
    try:
        pacs = pacs_options(config, config.run_date or tables.utc_now().date().isoformat())
        for location in (*config.inputs, *config.manifests, config.output, config.model):
            check_reachable(location, pacs)
        refuse_output_inside_inputs(config.output, config.inputs)
        info = registry.load_model_info(config.model)
        export = ONNX_EXPORT_OF.get(config.backend)
        if export and info.export_sha256(export) is None:
            how = (f"python -m tools.quantize_onnx --model {info.uri} --write" if export == "onnx_int8" else
                   f"python -m tools.export_onnx {info.uri}")
            raise registry.ModelError(f"--backend {config.backend}, but model {info.version} has no "
                                      f"{registry.ONNX_EXPORTS[export]}: make one with `{how}`, or use --backend "
                                      f"auto or tensorflow")
        listing = stage_listing(config.inputs, config.manifests, os.path.join(workspace.name, "listing"), pacs=pacs)
        refuse_empty_input(config, listing.entries)
        key = resolve_key(config, listing.may_hold_dicom)
        selection = load_rules(config.selection_rules)
        tables.check_layout(config.output)
        run_lock.check_free(config.output)
        tables.check_writable(config.output)
    except (registry.ModelError, storage.StorageError, PseudonymKeyError, SelectionRulesError,
            DicomwebConfigError) as error:
        workspace.cleanup()
        raise RunNotStartedError(str(error)) from error
    except BaseException:
        workspace.cleanup()
        raise
    return ScreeningPlan(config, info, listing, key, selection, workspace, pacs)


def refuse_empty_input(config: ScreenConfig, files: int) -> None:
    """An input with no files is what a failed export looks like: it must not be recorded as an empty night."""
    if not files and not config.allow_empty:
        raise RunNotStartedError(
            f"no input files found in {', '.join(config.inputs + config.manifests)}: nothing was written; pass "
            f"--allow-empty to record an empty run on purpose (it replaces the rows of its date)")


def run_screening(config: ScreenConfig) -> RunRecord:
    """Score the new and changed images under ``config.inputs`` and commit the results; see the module docstring."""
    return score_and_commit(prepare(config))


def score_and_commit(plan: ScreeningPlan) -> RunRecord:
    """Stages 3-7 with the model ``prepare`` resolved, holding the output's lock throughout: every row is scored
    by, and stamped with, that model."""
    try:
        return lock_score_and_commit(plan)
    finally:
        plan.workspace.cleanup()


def lock_score_and_commit(plan: ScreeningPlan) -> RunRecord:
    output = plan.config.output
    started = tables.utc_now()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with run_lock.RunLock(output, run_id):
        try:
            recovered = tables.recover(output, keep=run_id)
        except (storage.StorageError, tables.CommitError) as error:
            raise RunFailedError(f"an earlier run's commit could not be finished, so run {run_id} did not start: "
                                 f"{describe_failure(error)}") from error
        record = score(plan, run_id, started, recovered)
        try:
            tables.commit_run(output, run_id)
        except Exception as error:
            raise RunFailedError(
                f"run {run_id} failed while committing: {describe_failure(error)}; its results are complete in "
                f"{tables.work_uri(output, run_id)} and the next run of this output commits them first (or run "
                f"python -m jobs.maintain recover --results {output})") from error
    return record


def score(plan: ScreeningPlan, run_id: str, started: datetime.datetime, recovered: list[str]) -> RunRecord:
    """Stages 3-6 into the run's work folder, ending with its READY ``runs`` row; nothing any table shows."""
    config, info, output = plan.config, plan.model, plan.config.output
    run_date = config.run_date or started.date().isoformat()
    threshold = info.threshold if config.threshold is None else config.threshold
    context = StageContext(run_id, run_date, info.preprocessing, config.limits, plan.pseudonym_key, threshold,
                           info.version, info.weights_sha256, plan.selection, plan.pacs)
    try:
        connection = run_connection(output, plan.workspace.name)
        selection = choose_files(plan, connection, run_date)
        logger.info("run %s (%s, %s): %d files listed in %s, %d to score, %d carried over from the date's standing "
                    "run, %d unchanged; model %s", run_id, run_date, selection.mode, selection.listed,
                    ", ".join(config.inputs + config.manifests), selection.files, selection.carried_over,
                    selection.unchanged, info.version)
        if selection.other_model:
            logger.warning("%d unchanged file(s) were scored by another model than %s; %s", selection.other_model,
                           info.version, "rescoring them (--rescore-on-model-change)"
                           if config.rescore_on_model_change else
                           "pass --full or --rescore-on-model-change to rescore them")
        staged_uri = tables.work_uri(output, run_id, tables.PREDICTIONS)
        carried_rows = carry_over(connection, selection, staged_uri, run_id, run_date) if selection.carried_over else 0
        if selection.files:
            ensure_ray()  # Ray's own start-up is not scoring time
        scoring_began = time.monotonic()
        if selection.files:
            stage_predictions(predictions_dataset(selection, context, config, info), staged_uri, selection.files,
                              path_pseudonymizer(config, plan.pseudonym_key))
        scoring_seconds = time.monotonic() - scoring_began if selection.files else 0.0
        series, outcomes = summarise(connection, output, run_id, run_date, threshold)
        connection.close()
        record = run_record(config, info, run_id, run_date, started, selection, outcomes, series, threshold,
                            recovered, scoring_seconds, carried_rows)
        tables.stage_run_row(output, record.to_row())
    except Exception as error:
        raise RunFailedError(f"run {run_id} failed and was not committed: {describe_failure(error)}; the "
                             f"results read as before this run") from error
    return record
