"""Screening an MRI archive: the whole scoring run, stage by stage.

1. Resolve the model once (registry -> model folder, sha256 checked), check that S3 endpoints answer, the output
   is a results output this version writes, no other run holds it, it is writable and the pseudonym key is there:
   ``prepare``, before Ray starts and before any work.
2. List the inputs with size and modification time (``pipeline.listing``); an empty input is refused unless the
   run asks for an empty run. Take the output's lock (``pipeline.run_lock``), finish any earlier run's interrupted
   commit, and choose the files to score: by default only those new or changed since a complete run of another
   date scored them (``select_files``); ``full`` scores all.
3. Decode and preprocess (``pipeline.stages.decode_and_preprocess``): on CPU tasks when the cluster has GPUs, else
   in the scoring actors themselves.
4. Score on actors, GPU when the cluster has GPUs (``pipeline.stages.ScoringActor``), each loading the model
   folder resolved in stage 1 and refusing other weights; the flag threshold is the model's operating point unless
   the run sets one.
5. Stream the scored rows to the run's work folder (Parquet, ``pipeline.schema.PREDICTIONS_SCHEMA``), logging
   progress.
6. Summarise every DICOM series the run touched, from its rows and the series' earlier rows (``pipeline.series``):
   in the driver, or grouped on the cluster for runs of more than ``SERIES_ON_CLUSTER_FRAMES`` frames.
7. Stage the run's ``runs`` row and commit predictions -> series -> runs, one Delta transaction each
   (``pipeline.results``: a run counts completely or not at all).
The whole archive streams through Ray Data; nothing holds it in memory. Ray retries the work of a decoding task
or an inference actor whose process dies; a fault that survives the retries fails the run before its commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import time
import uuid
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from pipeline import results, run_lock, views
from pipeline import schema as col
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from model.decode import DICOM_EXTENSIONS, DecodeLimits
from pipeline.listing import ListedFile, list_input_files
from pipeline.pseudonym import PseudonymKeyError, load_key
from pipeline.selection import SelectionRules, SelectionRulesError, load_rules
from pipeline.series import SERIES_INPUT_COLUMNS, series_table, summarize_series
from pipeline.stages import (BACKENDS, EPOCH, ONNX, ONNX_EXPORT_OF, TENSORFLOW, ScoringActor, StageContext,
                             decode_and_preprocess)

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
    decode_batch_size: int = 64
    decode_cpus: float = 1.0
    inference_batch_size: int = 256
    inference_actors: int | None = None
    inference_cpus: float = 1.0
    use_gpu: bool | None = None
    limits: DecodeLimits = DecodeLimits()
    allow_empty: bool = False
    backend: str = "auto"  # "tensorflow", "onnx", "onnx-int8", or "auto": ONNX Runtime on CPU when the model has one
    full: bool = False  # rescore every listed file, not only new and changed ones
    rescore_on_model_change: bool = False  # also rescore unchanged files scored by another model
    selection_rules: str | None = None  # which DICOM objects are brain MRI: None, the bundled rules; "all", every one
    mirror_average: bool = False  # average each image's probabilities with its left-right mirror's

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1, got {self.threshold}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be auto, {' or '.join(BACKENDS)}, got {self.backend!r}")
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
    mode: str
    files_listed: int
    files_unchanged: int
    files_other_model: int
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
    recovered_runs: list = dataclasses.field(default_factory=list)  # earlier runs whose commit this run finished
    rows_skipped: int = 0  # not brain MRI by the selection rules
    rows_ood: int = 0  # scored, but unlike anything the model was trained on
    skipped_by_reason: dict = dataclasses.field(default_factory=dict)  # rows skipped per selection rule

    def to_row(self) -> dict:
        """The ``runs`` row: every column of ``RUNS_SCHEMA``, the two mappings as JSON text."""
        row = dataclasses.asdict(self)
        row[col.ERRORS_BY_CODE] = json.dumps(self.errors_by_code)
        row[col.SKIPPED_BY_REASON] = json.dumps(self.skipped_by_reason)
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
    """(actors, CPUs per actor, GPUs per actor, use_gpu) for the cluster at hand (started or joined here): one
    actor per GPU, or on CPU one per ``inference_cpus`` of the cluster's CPUs (each also decodes its batches)."""
    ensure_ray()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 if config.use_gpu is None else config.use_gpu
    if use_gpu:
        return config.inference_actors or max(1, gpus), 1.0, 1, True
    cpus = resources.get("CPU", 1)
    return config.inference_actors or max(1, int(cpus // config.inference_cpus)), config.inference_cpus, 0, False


DECODE_RESOURCE = "decode"  # advertised by a cluster's CPU nodes (cluster.yaml): decoding lands on them alone


def decode_placement(config: ScreenConfig) -> dict:
    """Decode tasks request a share of the ``decode`` resource when the cluster's nodes advertise it, so they run
    on CPU nodes and leave GPU nodes to inference; on a cluster without it (a GPU workstation) they go where CPUs
    are."""
    if DECODE_RESOURCE in ray.cluster_resources():
        return {"resources": {DECODE_RESOURCE: config.decode_cpus}}
    return {}


def predictions_dataset(files: list[ListedFile], context: StageContext, config: ScreenConfig,
                        model: registry.ModelInfo) -> ray.data.Dataset:
    """Stages 3-4: listed files -> scored prediction tables, lazily.

    On GPUs, CPU tasks decode (``--decode-cpus`` each, on the nodes advertising ``decode`` when there are any) and
    one actor per GPU scores. On CPU only, each scoring actor decodes its own batches: one process per CPU runs the
    whole per-image work and no image crosses the object store (docs/benchmarks.md: 1.35-1.44x a plain
    single-process loop here in the steady state)."""
    actors, cpus, gpus, use_gpu = inference_resources(config)
    backend = inference_backend(config, model, use_gpu)
    blocks = max(1, -(-len(files) // config.decode_batch_size))  # batches of at most decode_batch_size files
    actors = min(actors, blocks)
    logger.info("scoring: %d actor(s), %s CPU and %d GPU each, %s%s", actors, cpus, gpus, backend,
                "" if use_gpu else ", each decoding its own batches")
    items = [{col.SOURCE_URI: file.uri, col.SOURCE_SIZE: -1 if file.size is None else file.size,
              col.SOURCE_MODIFIED: micros(file.modified)} for file in files]
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    if use_gpu:
        dataset = dataset.map_batches(decode_and_preprocess, fn_kwargs={"context": context, "cpus": config.decode_cpus},
                                      batch_size=config.decode_batch_size, num_cpus=config.decode_cpus,
                                      **decode_placement(config))
    scorer = {"context": context, "scored_at": results.utc_now(), "decode": not use_gpu, "model_dir": model.uri,
              "weights_sha256": model.weights_sha256, "threshold": context.threshold,
              "cpu_threads": max(1, int(cpus)), "use_gpu": use_gpu, "batch_size": config.inference_batch_size,
              "backend": backend, "mirror_average": config.mirror_average}
    return dataset.map_batches(ScoringActor, fn_constructor_kwargs=scorer, batch_format="pyarrow",
                               batch_size=config.inference_batch_size if use_gpu else config.decode_batch_size,
                               num_cpus=cpus, num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors))


def inference_backend(config: ScreenConfig, model: registry.ModelInfo, use_gpu: bool) -> str:
    """The backend asked for; "auto": ONNX Runtime on CPU actors when the model ships an ONNX export (faster on CPU,
    docs/benchmarks.md), TensorFlow on GPUs."""
    if config.backend != "auto":
        return config.backend
    return ONNX if not use_gpu and model.onnx_sha256 else TENSORFLOW


def micros(moment: datetime.datetime | None) -> int:
    """Microseconds since the epoch, exactly (-1 for unknown): how modification times are compared."""
    return -1 if moment is None else (moment - EPOCH) // datetime.timedelta(microseconds=1)


class Progress:
    """Logs files done, errors, rate and time left at most every ``every`` seconds while rows arrive."""

    def __init__(self, total_files: int, every: float = 10.0):
        self.total, self.every = total_files, every
        self.files = self.rows = self.errors = 0
        self.started = self.last = time.monotonic()

    def update(self, batch: pa.Table) -> None:
        if not self.rows:
            logger.info("first scored rows after %.1f s (actors started, model loaded)", time.monotonic() - self.started)
        self.rows += batch.num_rows
        self.files += int(pc.sum(pc.equal(batch[col.FRAME_INDEX], 0)).as_py() or 0)
        self.errors += int(pc.sum(pc.equal(batch[col.STATUS], col.STATUS_ERROR)).as_py() or 0)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.files / (now - self.started)
            left = (self.total - self.files) / rate if rate else float("nan")
            logger.info("progress: %d/%d files (%d rows, %d errors), %.1f files/s, about %.0f s left", self.files,
                        self.total, self.rows, self.errors, rate, left)


def stage_predictions(dataset: ray.data.Dataset, uri: str, total_files: int) -> None:
    """Stage 5: stream the scored rows (a few hundred bytes each, no image) to Parquet files under ``uri``,
    logging progress; the driver's memory does not grow with the run (``results.ParquetParts``)."""
    progress, parts = Progress(total_files), results.ParquetParts(uri, col.PREDICTIONS_SCHEMA)
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        progress.update(batch)
        parts.write(batch)
    parts.close()


# what stages 6-7 read back, once
STAGED_COLUMNS = [*SERIES_INPUT_COLUMNS, col.ERROR_CODE, col.FLAGGED, col.SELECTION_RULE]


def series_frames(connection, staged: pa.Table, run_date: str) -> pa.Table:
    """The frames of every series this run touched: its own rows, and the latest earlier rows of the same series'
    other files (a series whose slices arrive over two nights is summarised whole)."""
    frames = staged.select(SERIES_INPUT_COLUMNS).filter(pc.is_valid(staged[col.SERIES_KEY]))
    if frames.num_rows == 0:
        return frames
    connection.register("touched", pa.table({col.SERIES_KEY: pc.unique(frames[col.SERIES_KEY]),}))
    connection.register("rescored", pa.table({col.SOURCE_URI: pc.unique(staged[col.SOURCE_URI])}))
    earlier = connection.sql(f"""
        SELECT {", ".join(SERIES_INPUT_COLUMNS)} FROM ({views.latest_before(run_date)})
        WHERE {col.SERIES_KEY} IN (SELECT {col.SERIES_KEY} FROM touched)
          AND {col.SOURCE_URI} NOT IN (SELECT {col.SOURCE_URI} FROM rescored)""").to_arrow_table()
    return pa.concat_tables([frames, earlier.cast(frames.schema)])


# Below this many frames a run's series are summarised in the driver (about 200 B a frame); above, grouped on the
# cluster. A Ray Data groupby costs a few seconds of shuffle set-up however small the run (docs/benchmarks.md).
SERIES_ON_CLUSTER_FRAMES = 200_000


def write_series(frames: pa.Table, uri: str, run_id: str, run_date: str, threshold: float,
                 on_cluster_frames: int = SERIES_ON_CLUSTER_FRAMES) -> tuple[int, int]:
    """Stage 6: summarise every series of ``frames`` into ``uri``/series.parquet, stamped with this run; returns
    (series, flagged series). Small runs group in the driver, large ones on the cluster (``on_cluster_frames``)."""
    if frames.num_rows == 0:
        return 0, 0
    arguments = {"threshold": threshold, "run_date": run_date}
    if frames.num_rows < on_cluster_frames:
        grouped = frames.to_pandas().groupby(col.SERIES_KEY, sort=True, group_keys=False)
        summaries = pd.concat([summarize_series(frame, **arguments) for _, frame in grouped], ignore_index=True)
    else:
        ensure_ray()
        partitions = max(1, min(64, frames.num_rows // 2000))
        summaries = ray.data.from_arrow(frames).groupby(col.SERIES_KEY, num_partitions=partitions).map_groups(
            summarize_series, fn_kwargs=arguments, batch_format="pandas").to_pandas()
    table = series_table(summaries.sort_values(col.SERIES_KEY, ignore_index=True))
    table = table.set_column(table.schema.get_field_index(col.RUN_ID), col.RUN_ID,
                             pa.array([run_id] * table.num_rows, pa.string()))
    results.write_parquet(table, storage.join(uri, "series.parquet"))
    return table.num_rows, int(pc.sum(pc.fill_null(table[col.FLAGGED], False)).as_py() or 0)


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """What the staged predictions of one run hold: rows by status, flags, unfamiliar inputs, and the reasons."""

    rows: int
    scored: int
    errors: int
    skipped: int
    flagged: int
    ood: int
    errors_by_code: dict
    skipped_by_reason: dict


def count_outcomes(table: pa.Table) -> Outcomes:
    """The counts of the staged predictions, for the ``runs`` row."""
    def count(mask) -> int:
        return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)

    status = table[col.STATUS]
    skipped = pc.equal(status, col.STATUS_SKIPPED)
    rules = table[col.SELECTION_RULE].filter(skipped).to_pylist()
    return Outcomes(
        rows=table.num_rows, scored=count(pc.equal(status, col.STATUS_OK)),
        errors=count(pc.equal(status, col.STATUS_ERROR)), skipped=count(skipped),
        flagged=count(table[col.FLAGGED]), ood=count(table[col.OOD]),
        errors_by_code=dict(sorted(Counter(code for code in table[col.ERROR_CODE].to_pylist() if code).items())),
        skipped_by_reason=dict(sorted(Counter(rule or "unknown" for rule in rules).items())))


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which listed files this run scores. ``unchanged``: listed files it leaves as scored before;
    ``other_model``: unchanged files whose rows come from another model than this run's."""

    files: list[ListedFile]
    mode: str
    unchanged: int = 0
    other_model: int = 0


def select_files(config: ScreenConfig, files: list[ListedFile], known: dict[str, views.ScoredFile],
                 model_sha256: str) -> Selection:
    """Incremental by default: a file is scored when no complete run of another date scored it, when its size or
    modification time differ from what was scored, or when an error that says nothing about the file hit it."""
    if config.full:
        return Selection(files, "full")
    chosen, unchanged, other_model = [], 0, 0
    for file in files:
        seen = known.get(file.uri)
        if (seen is None or seen.retry or file.size is None or file.modified is None
                or (seen.size, seen.modified_us) != (file.size, micros(file.modified))):
            chosen.append(file)
            continue
        if seen.model_sha256 != model_sha256:
            other_model += 1
            if config.rescore_on_model_change:
                chosen.append(file)
                continue
        unchanged += 1
    return Selection(chosen, "incremental", unchanged, other_model)


@dataclasses.dataclass(frozen=True)
class ScreeningPlan:
    """What stages 1-2 settled before any work: the resolved model, the listed files, the key. Needs no Ray."""

    config: ScreenConfig
    model: registry.ModelInfo
    files: list[ListedFile]
    pseudonym_key: bytes | None = dataclasses.field(repr=False)
    selection: SelectionRules = SelectionRules(())

    @property
    def uris(self) -> list[str]:
        return [file.uri for file in self.files]


def prepare(config: ScreenConfig) -> ScreeningPlan:
    """Stages 1-2: everything that can stop the run, checked before Ray starts and before anything is written."""
    try:
        for location in (*config.inputs, *config.manifests, config.output, config.model):
            storage.check_reachable(location)
        info = registry.load_model_info(config.model)
        export = ONNX_EXPORT_OF.get(config.backend)
        if export and info.export_sha256(export) is None:
            how = (f"python -m tools.quantize_onnx --model {info.uri} --write" if export == "onnx_int8" else
                   f"python -m tools.export_onnx {info.uri}")
            raise registry.ModelError(f"--backend {config.backend}, but model {info.version} has no "
                                      f"{registry.ONNX_EXPORTS[export]}: make one with `{how}`, or use --backend "
                                      f"auto or tensorflow")
        files = list_input_files(list(config.inputs), list(config.manifests))
        uris = [file.uri for file in files]
        refuse_empty_input(config, uris)
        key = resolve_key(config, uris)
        selection = load_rules(config.selection_rules)
        results.check_layout(config.output)
        run_lock.check_free(config.output)
        results.check_writable(config.output)
    except (registry.ModelError, storage.StorageError, PseudonymKeyError, SelectionRulesError) as error:
        raise RunNotStartedError(str(error)) from error
    return ScreeningPlan(config, info, files, key, selection)


def refuse_empty_input(config: ScreenConfig, uris: list[str]) -> None:
    """An input with no files is what a failed export looks like: it must not be recorded as an empty night."""
    if not uris and not config.allow_empty:
        raise RunNotStartedError(
            f"no input files found in {', '.join(config.inputs + config.manifests)}: nothing was written; pass "
            f"--allow-empty to record an empty run on purpose (it replaces the rows of its date)")


def run_screening(config: ScreenConfig) -> RunRecord:
    """Score the new and changed images under ``config.inputs`` and commit the results; see the module docstring."""
    return score_and_commit(prepare(config))


def score_and_commit(plan: ScreeningPlan) -> RunRecord:
    """Stages 3-7 with the model ``prepare`` resolved, holding the output's lock throughout: every row is scored
    by, and stamped with, that model."""
    output = plan.config.output
    started = results.utc_now()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with run_lock.RunLock(output, run_id):
        try:
            recovered = results.recover(output, keep=run_id)
        except (storage.StorageError, results.CommitError) as error:
            raise RunFailedError(f"an earlier run's commit could not be finished, so run {run_id} did not start: "
                                 f"{describe_failure(error)}") from error
        record = score(plan, run_id, started, recovered)
        try:
            results.commit_run(output, run_id)
        except Exception as error:
            raise RunFailedError(
                f"run {run_id} failed while committing: {describe_failure(error)}; its results are complete in "
                f"{results.work_uri(output, run_id)} and the next run of this output commits them first (or run "
                f"python -m jobs.maintain recover --results {output})") from error
    return record


def score(plan: ScreeningPlan, run_id: str, started: datetime.datetime, recovered: list[str]) -> RunRecord:
    """Stages 3-6 into the run's work folder, ending with its READY ``runs`` row; nothing any table shows."""
    config, info, output = plan.config, plan.model, plan.config.output
    run_date = config.run_date or started.date().isoformat()
    threshold = info.threshold if config.threshold is None else config.threshold
    context = StageContext(run_id, run_date, info.preprocessing, config.limits, plan.pseudonym_key, threshold,
                           info.version, info.weights_sha256, plan.selection)
    try:
        connection = views.connect(output)
        selection = select_files(config, plan.files, views.scored_files(connection, run_date),
                                 info.weights_sha256)
        logger.info("run %s (%s, %s): %d files listed in %s, %d to score, %d unchanged; model %s", run_id,
                    run_date, selection.mode, len(plan.files), ", ".join(config.inputs + config.manifests),
                    len(selection.files), selection.unchanged, info.version)
        if selection.other_model:
            logger.warning("%d unchanged file(s) were scored by another model than %s; %s", selection.other_model,
                           info.version, "rescoring them (--rescore-on-model-change)"
                           if config.rescore_on_model_change else
                           "pass --full or --rescore-on-model-change to rescore them")
        staged_uri = results.work_uri(output, run_id, results.PREDICTIONS)
        if selection.files:
            stage_predictions(predictions_dataset(selection.files, context, config, info), staged_uri,
                              len(selection.files))
        staged = results.read_parquet_files(staged_uri, col.PREDICTIONS_SCHEMA, STAGED_COLUMNS)
        series = write_series(series_frames(connection, staged, run_date),
                              results.work_uri(output, run_id, results.SERIES), run_id, run_date, threshold)
        record = run_record(config, info, run_id, run_date, started, len(plan.files), selection,
                            count_outcomes(staged), series, threshold, recovered)
        results.stage_run_row(output, record.to_row())
    except Exception as error:
        raise RunFailedError(f"run {run_id} failed and was not committed: {describe_failure(error)}; the "
                             f"results read as before this run") from error
    return record


def run_record(config, info, run_id, run_date, started, files, selection, counts: Outcomes, series_counts,
               threshold, recovered) -> RunRecord:
    rows = counts.rows
    finished = results.utc_now()
    duration = (finished - started).total_seconds()
    options = {key: value for key, value in dataclasses.asdict(config).items() if key != "pseudonym_key_file"}
    return RunRecord(
        run_id=run_id, run_date=run_date, started_at=started, finished_at=finished, duration_seconds=duration,
        input=", ".join(config.inputs + config.manifests), output=config.output, mode=selection.mode,
        files_listed=files, files_unchanged=selection.unchanged, files_other_model=selection.other_model,
        rows_written=rows, rows_scored=counts.scored, rows_error=counts.errors, rows_flagged=counts.flagged,
        rows_skipped=counts.skipped, rows_ood=counts.ood, skipped_by_reason=counts.skipped_by_reason,
        series=series_counts[0], series_flagged=series_counts[1], errors_by_code=counts.errors_by_code,
        images_per_second=rows / duration if duration else 0.0, model_version=info.version,
        model_sha256=info.weights_sha256, threshold=threshold, options=options, recovered_runs=recovered)
