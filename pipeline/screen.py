"""Screening an MRI archive: the whole scoring run, stage by stage.

1. Resolve the model once (registry -> model folder, sha256 checked), check that S3 endpoints answer, the output
   is writable and the pseudonym key is there: ``prepare``, before Ray starts and before any work.
2. List the inputs (``pipeline.listing``); an empty input is refused unless the run asks for an empty run.
3. Decode and preprocess on CPU tasks (``pipeline.stages.decode_and_preprocess``).
4. Score on inference actors, GPU when the cluster has GPUs (``pipeline.stages.InferenceActor``), each loading the
   model folder resolved in stage 1 and refusing other weights; the flag threshold is the model's operating point
   unless the run sets one.
5. Write the predictions to staging (Parquet, ``pipeline.schema.PREDICTIONS_SCHEMA``).
6. Summarise DICOM series from the staged predictions (``pipeline.series``).
7. Move both tables' files into their ``run_date`` partitions, commit the run's row to ``runs``, then remove the
   date's earlier files and the empty staging folders (``pipeline.results``: a run counts completely or not at all).
The whole archive streams through Ray Data; nothing holds it in memory. Ray retries the work of a decoding task
or an inference actor whose process dies; a fault that survives the retries fails the run before its commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from infra import storage
from model import registry
from pipeline import results
from pipeline import schema as col
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from model.decode import DICOM_EXTENSIONS, DecodeLimits
from pipeline.listing import list_inputs
from pipeline.pseudonym import PseudonymKeyError, load_key
from pipeline.series import SERIES_INPUT_COLUMNS, series_table, summarize_series
from pipeline.stages import InferenceActor, StageContext, decode_and_preprocess, to_predictions_table

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScreenConfig:
    """Options of one screening run; the defaults suit a laptop or a small CPU cluster."""

    inputs: tuple[str, ...]
    output: str
    manifests: tuple[str, ...] = ()
    model: str = registry.DEFAULT_MODEL
    threshold: float | None = None  # None: the model's own operating point
    run_date: str | None = None
    pseudonym_key_file: str | None = None
    create_pseudonym_key: bool = False
    decode_batch_size: int = 8
    decode_cpus: float = 0.5
    inference_batch_size: int = 64
    inference_actors: int | None = None
    inference_cpus: float = 1.0
    use_gpu: bool | None = None
    limits: DecodeLimits = DecodeLimits()
    allow_empty: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1, got {self.threshold}")
        if self.run_date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.run_date):
            raise ValueError(f"run_date must be written YYYY-MM-DD, got {self.run_date!r}")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run, as its ``runs`` row (``to_row``) and as the job's one-line JSON summary (``summary``)."""

    run_id: str
    run_date: str
    started_at: datetime.datetime
    finished_at: datetime.datetime
    duration_seconds: float
    input: str
    output: str
    files_listed: int
    rows_written: int
    rows_scored: int
    rows_error: int
    rows_flagged: int
    series: int
    series_flagged: int
    errors_by_code: dict
    images_per_second: float
    model_version: str
    model_sha256: str
    threshold: float
    options: dict

    def to_row(self) -> dict:
        """The ``runs`` row: every column of ``RUNS_SCHEMA``, the two mappings as JSON text."""
        row = dataclasses.asdict(self)
        row[col.ERRORS_BY_CODE] = json.dumps(self.errors_by_code)
        row[col.OPTIONS] = json.dumps(self.options, default=str)
        return {name: row[name] for name in col.RUNS_SCHEMA.names}

    def summary(self) -> dict:
        """JSON-ready counts and identity of the run (without its options)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != col.OPTIONS}


def may_hold_dicom(uris: list[str]) -> bool:
    names = (uri.rsplit("/", 1)[-1].lower() for uri in uris)
    return any(name.endswith(DICOM_EXTENSIONS) or "." not in name for name in names)


def resolve_key(config: ScreenConfig, uris: list[str]) -> bytes | None:
    key = load_key(config.pseudonym_key_file, config.create_pseudonym_key)
    if key is None and may_hold_dicom(uris):
        raise PseudonymKeyError(
            "the input holds DICOM files but no pseudonym key was given: set PSEUDONYM_KEY, or pass "
            "--pseudonym-key-file (with --create-pseudonym-key to generate one)")
    return key


def inference_resources(config: ScreenConfig) -> tuple[int, float, int, bool]:
    """(actors, CPUs per actor, GPUs per actor, use_gpu) for the cluster at hand."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 if config.use_gpu is None else config.use_gpu
    if use_gpu:
        return config.inference_actors or max(1, gpus), 1.0, 1, True
    cpus = resources.get("CPU", 1)
    spare = max(1.0, cpus - config.decode_cpus * 2)
    return config.inference_actors or max(1, int(spare // (config.inference_cpus * 2))), config.inference_cpus, 0, False


def predictions_dataset(uris: list[str], context: StageContext, config: ScreenConfig,
                        model: registry.ModelInfo) -> ray.data.Dataset:
    """Stages 3-4: URIs -> scored prediction tables, lazily."""
    actors, cpus, gpus, use_gpu = inference_resources(config)
    logger.info("inference: %d actor(s), %s CPU and %d GPU each", actors, cpus, gpus)
    blocks = max(1, min(len(uris), len(uris) // max(1, config.decode_batch_size)))
    scored_at = results.utc_now()
    return (
        ray.data.from_items([{col.SOURCE_URI: uri} for uri in uris], override_num_blocks=blocks)
        .map_batches(decode_and_preprocess, fn_kwargs={"context": context}, batch_size=config.decode_batch_size,
                     num_cpus=config.decode_cpus)
        .map_batches(InferenceActor, fn_constructor_kwargs={
            "model_dir": model.uri, "weights_sha256": model.weights_sha256, "threshold": context.threshold,
            "cpu_threads": max(1, int(cpus)), "use_gpu": use_gpu, "batch_size": config.inference_batch_size},
            batch_size=config.inference_batch_size, batch_format="pyarrow", num_cpus=cpus, num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=actors))
        .map_batches(to_predictions_table, fn_kwargs={"scored_at": scored_at}, batch_format="pyarrow",
                     num_cpus=0.25))


def write_predictions(dataset: ray.data.Dataset, uri: str) -> None:
    filesystem, path = storage.resolve(uri)
    dataset.drop_columns([col.RUN_DATE]).write_parquet(path, filesystem=filesystem)


STAGED_COLUMNS = [*SERIES_INPUT_COLUMNS, col.ERROR_CODE, col.FLAGGED]  # what stages 6-7 read back, once


def read_staged(uri: str, columns: list[str]) -> pa.Table | None:
    """Columns of the Parquet files staged under ``uri`` (None when there are none). The files are listed here
    and read with pyarrow: a folder-marker object on S3 (a zero-byte key ending in ``/``) is never taken for a
    file, which Ray's Parquet reader does when given the folder."""
    if not storage.is_dir(uri):
        return None
    filesystem, _ = storage.resolve(uri)
    files = [storage.resolve(file)[1] for file in storage.list_files(uri) if file.endswith(".parquet")]
    return pq.ParquetDataset(files, filesystem=filesystem).read(columns=columns) if files else None


def write_series(staged: pa.Table | None, series_uri: str, run_date: str, threshold: float) -> tuple[int, int]:
    """Stage 6: summarise every series of the staged predictions (their ``STAGED_COLUMNS``, about 200 B a row,
    grouped on the cluster); returns (series, flagged series)."""
    if staged is None:
        return 0, 0
    frames = staged.select(SERIES_INPUT_COLUMNS).filter(pc.is_valid(staged[col.SERIES_KEY]))
    if frames.num_rows == 0:
        return 0, 0
    partitions = max(1, min(64, frames.num_rows // 2000))
    summaries = ray.data.from_arrow(frames).groupby(col.SERIES_KEY, num_partitions=partitions).map_groups(
        summarize_series, fn_kwargs={"threshold": threshold, "run_date": run_date}, batch_format="pandas")
    table = series_table(summaries.to_pandas())
    results.write_table(table.drop_columns([col.RUN_DATE]), storage.join(series_uri, "series.parquet"))
    return table.num_rows, int(pc.sum(pc.fill_null(table[col.FLAGGED], False)).as_py() or 0)


def count_outcomes(table: pa.Table | None) -> tuple[int, int, int, Counter]:
    """(rows, scored, flagged, errors by code) of the staged predictions."""
    if table is None:
        return 0, 0, 0, Counter()
    errors = Counter(code for code in table[col.ERROR_CODE].to_pylist() if code)
    scored = pc.sum(pc.equal(table[col.STATUS], col.STATUS_OK)).as_py() or 0
    flagged = pc.sum(pc.fill_null(table[col.FLAGGED], False)).as_py() or 0
    return table.num_rows, int(scored), int(flagged), errors


@dataclasses.dataclass(frozen=True)
class ScreeningPlan:
    """What stages 1-2 settled before any work: the resolved model, the files, the key. Needs no Ray."""

    config: ScreenConfig
    model: registry.ModelInfo
    uris: list[str]
    pseudonym_key: bytes | None = dataclasses.field(repr=False)


def prepare(config: ScreenConfig) -> ScreeningPlan:
    """Stages 1-2: everything that can stop the run, checked before Ray starts and before anything is written."""
    try:
        for location in (*config.inputs, *config.manifests, config.output, config.model):
            storage.check_reachable(location)
        info = registry.load_model_info(config.model)
        uris = list_inputs(list(config.inputs), list(config.manifests))
        refuse_empty_input(config, uris)
        key = resolve_key(config, uris)
        results.check_writable(config.output)
    except (registry.ModelError, storage.StorageError, PseudonymKeyError) as error:
        raise RunNotStartedError(str(error)) from error
    return ScreeningPlan(config, info, uris, key)


def refuse_empty_input(config: ScreenConfig, uris: list[str]) -> None:
    """An input with no files is what a failed export looks like: it must not replace a date's results unasked."""
    if not uris and not config.allow_empty:
        raise RunNotStartedError(
            f"no input files found in {', '.join(config.inputs + config.manifests)}: nothing was written (an empty "
            f"run would replace the results of its date); pass --allow-empty to record an empty run on purpose")


def run_screening(config: ScreenConfig) -> RunRecord:
    """Score every image under ``config.inputs`` and publish the results tables; see the module docstring."""
    return score_and_commit(prepare(config))


def score_and_commit(plan: ScreeningPlan) -> RunRecord:
    """Stages 3-7 with the model ``prepare`` resolved: every row is scored by, and stamped with, that model."""
    config, info, uris, key = plan.config, plan.model, plan.uris, plan.pseudonym_key
    started = results.utc_now()
    run_date = config.run_date or started.date().isoformat()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    logger.info("run %s (%s): %d files from %s, model %s", run_id, run_date, len(uris),
                ", ".join(config.inputs + config.manifests), info.version)
    threshold = info.threshold if config.threshold is None else config.threshold
    context = StageContext(run_id, run_date, info.preprocessing, config.limits, key, threshold,
                           info.version, info.weights_sha256)
    try:
        results.clear_stale_staging(config.output, run_date)
        staged = results.staging_uri(config.output, results.PREDICTIONS, run_date, run_id)
        if uris:
            write_predictions(predictions_dataset(uris, context, config, info), staged)
        staged_rows = read_staged(staged, STAGED_COLUMNS)
        series = write_series(staged_rows, results.staging_uri(config.output, results.SERIES, run_date, run_id),
                              run_date, threshold)
        counts = count_outcomes(staged_rows)
        for table in results.PARTITIONED_TABLES:
            results.publish(config.output, table, run_date, run_id)
        record = finish_run(config, info, run_id, run_date, started, len(uris), counts, series, threshold)
    except Exception as error:
        raise RunFailedError(f"run {run_id} failed and was not committed: {describe_failure(error)}; the "
                             f"{run_date} results read as before this run") from error
    remove_superseded(config.output, run_date, run_id)
    return record


def remove_superseded(output: str, run_date: str, run_id: str) -> None:
    """Tidy after the commit; a failure here loses nothing (readers already ignore the old files)."""
    try:
        removed = results.remove_superseded(output, run_date, run_id)
        results.remove_empty_staging(output)
        logger.info("removed %d file(s) of earlier runs of %s", removed, run_date)
    except storage.StorageError as error:
        logger.warning("run %s committed, but earlier files of %s were not removed (the next run will): %s",
                       run_id, run_date, error)


def finish_run(config, info, run_id, run_date, started, files, counts, series_counts, threshold) -> RunRecord:
    """Stage 7's commit: the run's ``runs`` row, written last; returns the record."""
    rows, scored, flagged, errors = counts
    finished = results.utc_now()
    duration = (finished - started).total_seconds()
    record = RunRecord(
        run_id=run_id, run_date=run_date, started_at=started, finished_at=finished, duration_seconds=duration,
        input=", ".join(config.inputs + config.manifests), output=config.output, files_listed=files,
        rows_written=rows, rows_scored=scored, rows_error=rows - scored, rows_flagged=flagged,
        series=series_counts[0], series_flagged=series_counts[1], errors_by_code=dict(sorted(errors.items())),
        images_per_second=rows / duration if duration else 0.0, model_version=info.version,
        model_sha256=info.weights_sha256, threshold=threshold,
        options={key: value for key, value in dataclasses.asdict(config).items() if key != "pseudonym_key_file"})
    results.commit(config.output, record.to_row(), col.RUNS_SCHEMA)
    return record
