"""Screening an MRI archive: the whole scoring run, stage by stage.

1. Resolve the model once (registry -> model folder, sha256 checked), check that S3 endpoints answer, the output
   is a results output this version writes, outside every input folder, no other run holds it, it is writable and
   the pseudonym key is there: ``prepare``, before Ray starts and before any work.
2. List the inputs with size and modification time (``pipeline.listing``), streamed to Parquet in a local
   workspace; an empty input is refused unless the run asks for an empty run. Take the output's lock
   (``pipeline.run_lock``), finish any earlier run's interrupted commit, and choose the files to score: by default
   only those new or changed since a complete run of another date scored them (``select_files``, a query joining
   the listing with the results tables); ``full`` scores all. A re-run of a date carries over the rows of the
   files its standing run already scored, unchanged and with this model: copied as this run's (``carry_over``).
3. Decode and preprocess (``pipeline.stages.decode_and_preprocess``): on CPU tasks when the cluster has GPUs, else
   in the scoring actors themselves.
4. Score on actors, GPU when the cluster has GPUs (``pipeline.stages.ScoringActor``), each loading the model
   folder resolved in stage 1 and refusing other weights; the flag threshold is the model's operating point unless
   the run sets one.
5. Stream the scored rows to the run's work folder (Parquet, ``pipeline.schema.PREDICTIONS_SCHEMA``), logging
   progress.
6. Summarise every DICOM series the run touched, from its rows and the series' earlier rows (``pipeline.series``),
   streamed in series order from a query over the staged rows (``write_series``); count the run's outcomes with
   another (``count_outcomes``).
7. Stage the run's ``runs`` row and commit predictions -> series -> runs, one Delta transaction each
   (``pipeline.results``: a run counts completely or not at all).
The whole archive streams: through files and queries in the driver, through Ray Data on the cluster. The driver
holds no archive-sized list: its queries are bounded by DuckDB's limit (``DUCKDB_MEMORY``), and only the Delta
commit still grows, about 0.2 KB a row (docs/benchmarks.md, "Driver memory"). Ray retries the work of a decoding task
or an inference actor whose process dies; a fault that survives the retries fails the run before its commit.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import tempfile
import time
import uuid
from typing import Iterable, Iterator

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from pipeline import results, run_lock, views
from pipeline import schema as col
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from model.decode import DecodeLimits
from pipeline.listing import LISTING_SCHEMA, Listing, local_path, refuse_output_inside_inputs, stage_listing
from pipeline.paths import PathPseudonymizer
from pipeline.pseudonym import PseudonymKeyError, load_key
from pipeline.selection import SelectionRules, SelectionRulesError, load_rules
from pipeline.series import SERIES_INPUT_COLUMNS, series_table, summarize_series
from model.backends import BACKENDS, ONNX_EXPORT_OF, auto_backend
from pipeline.stages import ScoringActor, StageContext, decode_and_preprocess

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
    backend: str = "auto"  # "tensorflow", "onnx", "onnx-int8", or "auto" (``inference_backend``)
    full: bool = False  # rescore every listed file, not only new and changed ones
    rescore_on_model_change: bool = False  # also rescore unchanged files scored by another model
    selection_rules: str | None = None  # which DICOM objects are brain MRI: None, the bundled rules; "all", every one
    mirror_average: bool = False  # average each image's probabilities with its left-right mirror's
    pseudonymize_paths: bool = False  # store source_uri with its folder names pseudonymised (pipeline.paths)

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
    scoring_seconds: float = 0.0  # the scoring stage alone: from the actors starting to the last row
    scoring_images_per_second: float = 0.0  # rows per second of scoring_seconds (images_per_second: of the run)
    files_carried_over: int = 0  # files whose rows the date's standing run held, copied instead of scored
    rows_carried_over: int = 0  # their rows: part of rows_written, left out of the rates

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


def resolve_key(config: ScreenConfig, may_hold_dicom: bool) -> bytes | None:
    key = load_key(config.pseudonym_key_file, config.create_pseudonym_key)
    if key is None and (may_hold_dicom or config.pseudonymize_paths):
        needs = "the input holds DICOM files" if may_hold_dicom else "--pseudonymize-paths needs it"
        raise PseudonymKeyError(
            f"{needs} but no pseudonym key was given: set PSEUDONYM_KEY, or pass "
            f"--pseudonym-key-file (with --create-pseudonym-key to generate one)")
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


def predictions_dataset(selection: Selection, context: StageContext, config: ScreenConfig,
                        model: registry.ModelInfo) -> ray.data.Dataset:
    """Stages 3-4: the chosen files (``chosen_files_dataset``) -> scored prediction tables, lazily.

    On GPUs, CPU tasks decode (``--decode-cpus`` each, on the nodes advertising ``decode`` when there are any) and
    one actor per GPU scores. On CPU only, each scoring actor decodes its own batches: one process per CPU runs the
    whole per-image work and no image crosses the object store (docs/benchmarks.md: 1.35-1.44x a plain
    single-process loop here in the steady state)."""
    actors, cpus, gpus, use_gpu = inference_resources(config)
    backend = inference_backend(config, model, use_gpu)
    blocks = max(1, -(-selection.files // config.decode_batch_size))  # batches of at most decode_batch_size files
    actors = min(actors, blocks)
    logger.info("scoring: %d actor(s), %s CPU and %d GPU each, %s%s", actors, cpus, gpus, backend,
                "" if use_gpu else ", each decoding its own batches")
    dataset = chosen_files_dataset(selection, config.decode_batch_size)
    if use_gpu:
        dataset = dataset.map_batches(decode_and_preprocess, fn_kwargs={"context": context, "cpus": config.decode_cpus},
                                      batch_size=config.decode_batch_size, num_cpus=config.decode_cpus,
                                      **decode_placement(config))
    scorer = {"context": context, "scored_at": results.utc_now(), "decode": not use_gpu, "model_dir": model.uri,
              "weights_sha256": model.weights_sha256, "threshold": context.threshold,
              "cpu_threads": max(1, int(cpus)), "use_gpu": use_gpu, "batch_size": config.inference_batch_size,
              "backend": backend, "mirror_average": mirror_average(config, model)}
    return dataset.map_batches(ScoringActor, fn_constructor_kwargs=scorer, batch_format="pyarrow",
                               batch_size=config.inference_batch_size if use_gpu else config.decode_batch_size,
                               num_cpus=cpus, num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors))


def mirror_average(config: ScreenConfig, model: registry.ModelInfo) -> bool:
    """Whether the actors average each image with its mirror: asked for, and not already in the model's graph."""
    if config.mirror_average and model.architecture.mirror_views:
        logger.info("model %s averages each slice with its mirror in its own graph: --mirror-average adds nothing",
                    model.version)
    return config.mirror_average and not model.architecture.mirror_views


def chosen_files_dataset(selection: Selection, rows: int) -> ray.data.Dataset:
    """The chosen files as a Ray dataset of blocks of ``rows`` files (``LISTING_SCHEMA``), read from the selection's
    Parquet and put in the object store by the driver, with their metadata computed here (``from_arrow_refs``
    would run a task a block for it: a second here for 32 blocks). The blocks are held at once only while they are
    put: about 100 bytes a file."""
    return ray.data.from_blocks(list(selection.blocks(rows)))


def inference_backend(config: ScreenConfig, model: registry.ModelInfo, use_gpu: bool) -> str:
    """The backend asked for; "auto": TensorFlow on GPUs, on CPU actors float32 ONNX unless the model's int8 graph
    earned the default on held-out data (``model.backends``). Each actor asked for int8 checks it against float32
    on its own CPU first and falls back to float32 when they disagree."""
    return auto_backend(model, use_gpu) if config.backend == "auto" else config.backend


class Progress:
    """Logs files done, errors, rate and time left at most every ``every`` seconds while rows arrive."""

    def __init__(self, total_files: int, every: float = 10.0):
        self.total, self.every = total_files, every
        self.files = self.rows = self.errors = 0
        self.started = self.last = time.monotonic()

    def update(self, batch: pa.Table) -> None:
        if not self.rows:
            logger.info("first scored rows after %.1f s (actors started, model loaded)",
                        time.monotonic() - self.started)
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


def stage_predictions(dataset: ray.data.Dataset, uri: str, total_files: int,
                      paths: PathPseudonymizer | None = None) -> None:
    """Stage 5: stream the scored rows (a few hundred bytes each, no image) to Parquet files under ``uri``,
    logging progress; the driver's memory does not grow with the run (``results.ParquetParts``). With ``paths``,
    each row's ``source_uri`` is stored with its folder names pseudonymised."""
    progress, parts = Progress(total_files), results.ParquetParts(uri, col.PREDICTIONS_SCHEMA)
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        progress.update(batch)
        parts.write(with_pseudonymous_paths(batch, paths) if paths else batch)
    parts.close()


def with_pseudonymous_paths(batch: pa.Table, paths: PathPseudonymizer) -> pa.Table:
    """``batch`` with each ``source_uri`` pseudonymised, and in its error message too (a message may quote it)."""
    uris = batch[col.SOURCE_URI].to_pylist()
    hidden = [paths(uri) for uri in uris]
    messages = [message.replace(uri, pseudonym) if message and uri else message
                for message, uri, pseudonym in zip(batch[col.ERROR_MESSAGE].to_pylist(), uris, hidden)]
    batch = batch.set_column(batch.schema.get_field_index(col.SOURCE_URI), col.SOURCE_URI,
                             pa.array(hidden, pa.string()))
    return batch.set_column(batch.schema.get_field_index(col.ERROR_MESSAGE), col.ERROR_MESSAGE,
                            pa.array(messages, pa.string()))


def path_pseudonymizer(config: ScreenConfig, key: bytes | None) -> PathPseudonymizer | None:
    """The run's ``PathPseudonymizer`` (its input folders kept as they are), or None when paths are stored as
    they are."""
    if not config.pseudonymize_paths:
        return None
    roots = [location.rstrip("/") if storage.is_s3(location) else local_path(location) for location in config.inputs]
    return PathPseudonymizer(key, roots)


STAGED = "staged"  # the run's staged predictions, as DuckDB sees them while stage 6 queries them
# what stage 6 reads of the staged predictions, once, into a DuckDB table
STAGED_COLUMNS = [*SERIES_INPUT_COLUMNS, col.ERROR_CODE, col.FLAGGED, col.SELECTION_RULE]
# DuckDB's memory in the driver: its sorts, joins and tables spill to the run's local workspace beyond this, so the
# selection and the series step hold the same memory for a thousand files or a million (docs/benchmarks.md)
DUCKDB_MEMORY = "256MB"


def run_connection(output: str, workspace: str) -> duckdb.DuckDBPyConnection:
    """The results views of ``output`` (``pipeline.views``) on a DuckDB bounded to ``DUCKDB_MEMORY``, spilling to
    ``workspace``."""
    connection = views.connect(output)
    connection.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    connection.execute(f"SET temp_directory = '{os.path.join(workspace, 'duckdb')}'")
    connection.execute("SET preserve_insertion_order = false")
    return connection


def series_frames_query(run_date: str) -> str:
    """SQL: the frames of every series this run touched, in series order: its own rows (``staged``), and the latest
    earlier rows of the same series' other files (a series whose slices arrive over two nights is summarised
    whole)."""
    columns = ", ".join(SERIES_INPUT_COLUMNS)
    return f"""
        SELECT {columns} FROM {STAGED} WHERE {col.SERIES_KEY} IS NOT NULL
        UNION ALL
        SELECT {columns} FROM ({views.latest_before(run_date)})
        WHERE {col.SERIES_KEY} IN (SELECT {col.SERIES_KEY} FROM {STAGED} WHERE {col.SERIES_KEY} IS NOT NULL)
          AND {col.SOURCE_URI} NOT IN (SELECT {col.SOURCE_URI} FROM {STAGED})
        ORDER BY {col.SERIES_KEY}"""


def whole_series(batches: Iterable[pa.RecordBatch]) -> Iterator[pd.DataFrame]:
    """Frames ordered by series key, in batches -> frames holding whole series: the rows of the last series of a
    batch wait for the next batch, which may hold more of them."""
    waiting = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        frame = batch.to_pandas()
        if waiting is not None:
            frame = pd.concat([waiting, frame], ignore_index=True)
        last = frame[col.SERIES_KEY].to_numpy() == frame[col.SERIES_KEY].iloc[-1]
        waiting = frame[last]
        if not last.all():
            yield frame[~last]
    if waiting is not None:
        yield waiting


def write_series(frames: Iterable[pa.RecordBatch], uri: str, run_id: str, run_date: str,
                 threshold: float) -> tuple[int, int]:
    """Stage 6: summarise the series of ``frames`` (record batches ordered by series key) into Parquet under
    ``uri``, stamped with this run; returns (series, flagged series). Memory holds a batch and a series, not the
    run's frames."""
    parts, series, flagged = results.ParquetParts(uri, col.SERIES_SCHEMA), 0, 0
    for frame in whole_series(frames):
        grouped = frame.groupby(col.SERIES_KEY, sort=True, group_keys=False)
        summaries = pd.concat([summarize_series(rows, threshold, run_date) for _, rows in grouped],
                              ignore_index=True)
        table = series_table(summaries)
        table = table.set_column(table.schema.get_field_index(col.RUN_ID), col.RUN_ID,
                                 pa.array([run_id] * table.num_rows, pa.string()))
        parts.write(table)
        series += table.num_rows
        flagged += int(pc.sum(pc.fill_null(table[col.FLAGGED], False)).as_py() or 0)
    parts.close()
    return series, flagged


SERIES_BATCH_ROWS = 20_000  # frames a batch of the series query holds


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


def count_outcomes(connection: duckdb.DuckDBPyConnection) -> Outcomes:
    """The counts of the staged predictions (``staged``), for the ``runs`` row: aggregates, not the rows."""
    status = col.STATUS
    rows, scored, errors, skipped, flagged, ood = connection.execute(f"""
        SELECT count(*), count(*) FILTER ({status} = '{col.STATUS_OK}'),
               count(*) FILTER ({status} = '{col.STATUS_ERROR}'), count(*) FILTER ({status} = '{col.STATUS_SKIPPED}'),
               count(*) FILTER ({col.FLAGGED}), count(*) FILTER ({col.OOD}) FROM {STAGED}""").fetchone()
    errors_by_code = connection.execute(f"""
        SELECT {col.ERROR_CODE}, count(*) FROM {STAGED} WHERE {col.ERROR_CODE} IS NOT NULL
        GROUP BY ALL ORDER BY 1""").fetchall()
    skipped_by_reason = connection.execute(f"""
        SELECT coalesce({col.SELECTION_RULE}, 'unknown'), count(*) FROM {STAGED}
        WHERE {status} = '{col.STATUS_SKIPPED}' GROUP BY ALL ORDER BY 1""").fetchall()
    return Outcomes(rows, scored, errors, skipped, flagged, ood, dict(errors_by_code), dict(skipped_by_reason))


VERDICT = "verdict"  # a listed file's verdict in a run's selection
NEW_OR_CHANGED, OTHER_MODEL, UNCHANGED = "new_or_changed", "other_model", "unchanged"
CARRIED_OVER = "carried_over"  # scored by the date's standing run, unchanged, with this run's model: rows copied
STANDING_URI = "standing_uri"  # in the verdicts: the source_uri the date's standing rows store for the file


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which listed files this run scores. ``verdicts``: a Parquet file holding each listed file once, with its
    verdict; ``chosen``: the verdicts scored; ``listed``: distinct files listed; ``files``: files to score;
    ``unchanged``: listed files left as scored before; ``other_model``: unchanged files whose rows come from another
    model than this run's; ``carried_over``: files whose rows the date's standing run holds, copied into this run."""

    verdicts: str
    chosen: tuple[str, ...]
    mode: str
    listed: int
    files: int
    unchanged: int = 0
    other_model: int = 0
    carried_over: int = 0

    def blocks(self, rows: int) -> Iterator[pa.Table]:
        """The chosen files (``LISTING_SCHEMA``), ``rows`` at a time, read from the verdicts as they are needed."""
        scanner = pads.dataset(self.verdicts, format="parquet").scanner(
            columns=LISTING_SCHEMA.names, filter=pc.field(VERDICT).isin(list(self.chosen)), batch_size=rows)
        waiting, count = [], 0
        for batch in scanner.to_batches():
            waiting.append(batch)
            count += batch.num_rows
            while count >= rows:
                table = pa.Table.from_batches(waiting, LISTING_SCHEMA)
                yield table.slice(0, rows)
                waiting, count = table.slice(rows).to_batches(), count - rows
        if count:
            yield pa.Table.from_batches(waiting, LISTING_SCHEMA)


def select_files(config: ScreenConfig, connection: duckdb.DuckDBPyConnection, listing: str, known: str,
                 model_sha256: str, verdicts: str, stored_uri: str = "{}", standing: str | None = None) -> Selection:
    """Incremental by default: a file is scored when no complete run of another date scored it, when its size or
    modification time differ from what was scored, or when an error that says nothing about the file hit it. A
    file the run's date already holds rows of (``standing``: SQL as ``known`` for the date's standing run, see
    ``views.standing_files``), with the same size and time, no such error, and this model's sha256, is carried
    over instead: its rows are copied, not scored again.

    ``listing`` is a relation of listed files (``LISTING_SCHEMA``, a file may come twice) and ``known`` SQL for
    what the tables know (``views.scored_files``); the verdicts are written to the Parquet file ``verdicts`` by
    one query, so memory holds neither list. ``stored_uri``: SQL turning a listed URI (``{}``) into the
    ``source_uri`` the tables store for it."""
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise ValueError(f"not a sha256: {model_sha256!r}")
    size, modified, uri = col.SOURCE_SIZE, col.SOURCE_MODIFIED, col.SOURCE_URI
    listed = (f"SELECT {uri}, any_value({size}) AS {size}, any_value({modified}) AS {modified} FROM {listing} "
              f"GROUP BY {uri}")
    verdict, joins, carried, standing_uri = f"'{NEW_OR_CHANGED}'", "", "", "NULL"
    if not config.full:
        listed = f"SELECT *, {stored_uri.format(uri)} AS stored FROM ({listed})"
        joins = f"LEFT JOIN ({known}) k ON k.{uri} = l.stored"
        if standing:
            joins += f" LEFT JOIN ({standing}) s ON s.{uri} = l.stored"
            carried = f"""WHEN NOT s.retry AND s.{size} = l.{size} AND s.modified_us = l.{modified}
                 AND s.{col.MODEL_SHA256} = '{model_sha256}' THEN '{CARRIED_OVER}'"""
            standing_uri = f"s.{uri}"
        verdict = f"""CASE
            WHEN l.{size} < 0 OR l.{modified} < 0 THEN '{NEW_OR_CHANGED}'
            {carried}
            WHEN k.{uri} IS NULL OR k.retry OR k.{size} IS DISTINCT FROM l.{size}
                 OR k.modified_us IS DISTINCT FROM l.{modified} THEN '{NEW_OR_CHANGED}'
            WHEN k.{col.MODEL_SHA256} IS DISTINCT FROM '{model_sha256}' THEN '{OTHER_MODEL}'
            ELSE '{UNCHANGED}' END"""
    connection.execute(f"""COPY (
        SELECT l.{uri}, l.{size}, l.{modified}, {verdict} AS {VERDICT},
               CAST({standing_uri} AS VARCHAR) AS {STANDING_URI} FROM ({listed}) l {joins}) TO '{verdicts}' (FORMAT parquet)""")
    counts = dict(connection.execute(
        f"SELECT {VERDICT}, count(*) FROM read_parquet('{verdicts}') GROUP BY ALL").fetchall())
    other_model = counts.get(OTHER_MODEL, 0)
    chosen = (NEW_OR_CHANGED, OTHER_MODEL) if config.rescore_on_model_change else (NEW_OR_CHANGED,)
    return Selection(verdicts, chosen, "full" if config.full else "incremental", listed=sum(counts.values()),
                     files=sum(counts.get(name, 0) for name in chosen),
                     unchanged=counts.get(UNCHANGED, 0) + (0 if config.rescore_on_model_change else other_model),
                     other_model=other_model, carried_over=counts.get(CARRIED_OVER, 0))


def carry_over(connection: duckdb.DuckDBPyConnection, selection: Selection, uri: str, run_id: str,
               run_date: str) -> int:
    """The rows the date's standing run holds for the files carried over, staged under ``uri`` (beside the run's
    scored predictions) as this run's rows: its run id, their own ``scored_at``, everything else as it stands.
    Returns the rows copied; memory holds a batch of them."""
    rows = connection.sql(f"""
        SELECT * REPLACE ('{run_id}' AS {col.RUN_ID}) FROM {results.PREDICTIONS}
        WHERE {col.RUN_DATE} = '{views.checked_date(run_date)}' AND {col.SOURCE_URI} IN (
            SELECT {STANDING_URI} FROM read_parquet('{selection.verdicts}') WHERE {VERDICT} = '{CARRIED_OVER}')
        """).to_arrow_reader(SERIES_BATCH_ROWS)
    parts, copied = results.ParquetParts(uri, col.PREDICTIONS_SCHEMA, name=CARRIED_OVER), 0
    for batch in rows:
        parts.write(pa.Table.from_batches([batch]).select(col.PREDICTIONS_SCHEMA.names).cast(col.PREDICTIONS_SCHEMA))
        copied += batch.num_rows
    parts.close()
    return copied


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


def prepare(config: ScreenConfig) -> ScreeningPlan:
    """Stages 1-2: everything that can stop the run, checked before Ray starts and before anything is written to
    the output (the listing goes to a local temporary folder)."""
    workspace = tempfile.TemporaryDirectory(prefix="mri-screen-")
    try:
        for location in (*config.inputs, *config.manifests, config.output, config.model):
            storage.check_reachable(location)
        refuse_output_inside_inputs(config.output, config.inputs)
        info = registry.load_model_info(config.model)
        export = ONNX_EXPORT_OF.get(config.backend)
        if export and info.export_sha256(export) is None:
            how = (f"python -m tools.quantize_onnx --model {info.uri} --write" if export == "onnx_int8" else
                   f"python -m tools.export_onnx {info.uri}")
            raise registry.ModelError(f"--backend {config.backend}, but model {info.version} has no "
                                      f"{registry.ONNX_EXPORTS[export]}: make one with `{how}`, or use --backend "
                                      f"auto or tensorflow")
        listing = stage_listing(config.inputs, config.manifests, os.path.join(workspace.name, "listing"))
        refuse_empty_input(config, listing.entries)
        key = resolve_key(config, listing.may_hold_dicom)
        selection = load_rules(config.selection_rules)
        results.check_layout(config.output)
        run_lock.check_free(config.output)
        results.check_writable(config.output)
    except (registry.ModelError, storage.StorageError, PseudonymKeyError, SelectionRulesError) as error:
        workspace.cleanup()
        raise RunNotStartedError(str(error)) from error
    except BaseException:
        workspace.cleanup()
        raise
    return ScreeningPlan(config, info, listing, key, selection, workspace)


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
        staged_uri = results.work_uri(output, run_id, results.PREDICTIONS)
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
        results.stage_run_row(output, record.to_row())
    except Exception as error:
        raise RunFailedError(f"run {run_id} failed and was not committed: {describe_failure(error)}; the "
                             f"results read as before this run") from error
    return record


def summarise(connection: duckdb.DuckDBPyConnection, output: str, run_id: str, run_date: str,
              threshold: float) -> tuple[tuple[int, int], Outcomes]:
    """Stage 6 over the run's staged predictions: its series written beside them, and its outcomes counted;
    returns ((series, flagged series), outcomes)."""
    staged_uri = results.work_uri(output, run_id, results.PREDICTIONS)
    connection.register("staged_rows", results.staged_batches(staged_uri, col.PREDICTIONS_SCHEMA, STAGED_COLUMNS))
    connection.execute(f"CREATE TEMP TABLE {STAGED} AS SELECT * FROM staged_rows")  # read once, queried twice
    connection.unregister("staged_rows")
    frames = connection.sql(series_frames_query(run_date)).to_arrow_reader(SERIES_BATCH_ROWS)
    series = write_series(frames, results.work_uri(output, run_id, results.SERIES), run_id, run_date, threshold)
    outcomes = count_outcomes(connection)
    connection.execute(f"DROP TABLE {STAGED}")  # its memory goes back before the commit
    return series, outcomes


def run_record(config, info, run_id, run_date, started, selection: Selection, counts: Outcomes, series_counts,
               threshold, recovered, scoring_seconds: float = 0.0, carried_rows: int = 0) -> RunRecord:
    """The run's record; its rate over the whole run (``images_per_second``, Ray's start-up, the listing and the
    commit's preparation included) and over the scoring stage alone (``scoring_images_per_second``), each of the
    rows it scored (not those it carried over)."""
    rows = counts.rows - carried_rows
    finished = results.utc_now()
    duration = (finished - started).total_seconds()
    options = {key: value for key, value in dataclasses.asdict(config).items() if key != "pseudonym_key_file"}
    return RunRecord(
        run_id=run_id, run_date=run_date, started_at=started, finished_at=finished, duration_seconds=duration,
        input=", ".join(config.inputs + config.manifests), output=config.output, mode=selection.mode,
        files_listed=selection.listed, files_unchanged=selection.unchanged, files_other_model=selection.other_model,
        rows_written=counts.rows, rows_scored=counts.scored, rows_error=counts.errors, rows_flagged=counts.flagged,
        rows_skipped=counts.skipped, rows_ood=counts.ood, skipped_by_reason=counts.skipped_by_reason,
        series=series_counts[0], series_flagged=series_counts[1], errors_by_code=counts.errors_by_code,
        images_per_second=rows / duration if duration else 0.0, scoring_seconds=scoring_seconds,
        scoring_images_per_second=rows / scoring_seconds if scoring_seconds else 0.0, model_version=info.version,
        model_sha256=info.weights_sha256, threshold=threshold, options=options, recovered_runs=recovered,
        files_carried_over=selection.carried_over, rows_carried_over=carried_rows)
