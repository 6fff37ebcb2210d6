"""Where the screening driver's memory goes: one run of the real job in this process, with the driver's resident
(RSS) and unique (USS) memory read after each stage, and its peak RSS sampled every 0.1 s.

    python -m tools.driver_memory --input ARCHIVE --output OUT --pseudonym-key-file KEY
    python -m tools.driver_memory --input ARCHIVE --output OUT --listing-only
    python -m tools.driver_memory --output OUT --synthetic-rows 1000000

``--listing-only`` stops after the selection (listing, comparison with the results tables) and the hand-over of
the chosen files to Ray's object store: the part of a night that touches every file of the archive, however few
changed, measured without scoring. ``--synthetic-rows N`` measures the steps after scoring (series, counts, the
three commits) on N staged prediction rows made up here, half of them DICOM frames in series of 20, so a
million-row night is measured without scoring a million images. Each line printed is JSON.
The figures are in docs/benchmarks.md ("Driver memory").
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import psutil

from infra.ray_runtime import ensure_ray
from pipeline.results import tables
from pipeline import schema as col
from pipeline.screening import run as screening


class PeakSampler(threading.Thread):
    """The process's peak RSS, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.process, self.every, self.peak, self.running = psutil.Process(), every, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)


def mib(value: int) -> float:
    return round(value / 2**20, 1)


class Probe:
    """Wraps stage functions so that each call prints the driver's memory when it returns."""

    def __init__(self, sampler: PeakSampler):
        self.sampler, self.started = sampler, time.perf_counter()

    def report(self, stage: str, **extra) -> None:
        memory = psutil.Process().memory_full_info()
        print(json.dumps({"stage": stage, "seconds": round(time.perf_counter() - self.started, 1),
                          "rss_mib": mib(memory.rss), "uss_mib": mib(memory.uss),
                          "peak_rss_mib": mib(max(self.sampler.peak, memory.rss)), **extra}), flush=True)

    def wrap(self, owner, name: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def probed(*args, **kwargs):
            value = function(*args, **kwargs)
            self.report(name)
            return value
        setattr(owner, name, probed)


def synthetic_rows(run_id: str, start: int, count: int, rng: np.random.Generator) -> pa.Table:
    """Staged prediction rows ``start``..``start + count``: scored, every other one a DICOM frame of a series of 20."""
    index = np.arange(start, start + count)
    dicom = index % 2 == 1
    series = np.where(dicom, index // 40, -1)
    probabilities = rng.dirichlet(np.ones(4), count).astype(np.float32)

    def keyed(prefix: str, values: np.ndarray) -> pa.Array:
        return pa.array([f"{prefix}{value:064d}"[-64:] if value >= 0 else None for value in values.tolist()])

    columns = {col.RUN_ID: pa.array([run_id] * count), col.RUN_DATE: pa.array(["2026-11-30"] * count),
               col.SOURCE_URI: pa.array([f"s3://archive/night/{value:09d}.{'dcm' if value % 2 else 'jpg'}"
                                         for value in index.tolist()]),
               col.SOURCE_SIZE: pa.array(np.full(count, 524_288)), col.FRAME_INDEX: pa.array(np.zeros(count, np.int32)),
               col.STATUS: pa.array([col.STATUS_OK] * count), col.TUMOR_PROBABILITY: pa.array(1 - probabilities[:, 2]),
               col.PREDICTED_CLASS: pa.array(np.array(["glioma", "meningioma", "notumor", "pituitary"])[
                   probabilities.argmax(axis=1)]),
               col.FLAGGED: pa.array(probabilities[:, 2] < 0.5), col.OOD: pa.array(np.zeros(count, bool)),
               col.SERIES_KEY: keyed("s", series), col.STUDY_KEY: keyed("t", np.where(dicom, series // 3, -1)),
               col.PATIENT_KEY: keyed("p", np.where(dicom, series // 3, -1)),
               col.INSTANCE_NUMBER: pa.array(np.where(dicom, index // 2 % 20 + 1, 0).astype(np.int32),
                                             mask=~dicom),
               col.SLICE_POSITION: pa.array(np.where(dicom, 5.0 * (index // 2 % 20), 0.0), mask=~dicom),
               col.MODALITY: pa.array(np.where(dicom, "MR", None)), col.MODEL_VERSION: pa.array(["synthetic"] * count)}
    columns.update({name: pa.array(probabilities[:, position])
                    for position, name in enumerate(col.PROBABILITY_COLUMNS)})
    return pa.table({field.name: columns.get(field.name, pa.nulls(count, field.type)).cast(field.type)
                     for field in col.PREDICTIONS_SCHEMA}, schema=col.PREDICTIONS_SCHEMA)


def after_scoring(output: str, rows: int, probe: Probe) -> None:
    """Stage ``rows`` synthetic rows as a run would, then run its series, counts and commits."""
    run_id, rng = "synthetic-run", np.random.default_rng(0)
    parts = tables.ParquetParts(tables.work_uri(output, run_id, tables.PREDICTIONS), col.PREDICTIONS_SCHEMA)
    for start in range(0, rows, 10_000):
        parts.write(synthetic_rows(run_id, start, min(10_000, rows - start), rng))
    parts.close()
    probe.report("staged", rows=rows)
    with tempfile.TemporaryDirectory() as workspace:
        connection = screening.run_connection(output, workspace)
        (series, flagged), outcomes = screening.summarise(connection, output, run_id, "2026-11-30", 0.5)
        connection.close()
    probe.report("series and counts", series=series, rows_counted=outcomes.rows)
    finished = datetime.datetime.now(datetime.timezone.utc)
    tables.stage_run_row(output, {col.RUN_ID: run_id, col.RUN_DATE: "2026-11-30", col.FINISHED_AT: finished})
    tables.commit_run(output, run_id)
    probe.report("committed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input")
    parser.add_argument("--output", required=True)
    parser.add_argument("--pseudonym-key-file")
    parser.add_argument("--listing-only", action="store_true", help="stop after the selection")
    parser.add_argument("--synthetic-rows", type=int, help="measure the steps after scoring on this many made-up rows")
    args = parser.parse_args()
    sampler = PeakSampler()
    sampler.start()
    probe = Probe(sampler)
    probe.report("imports")
    if args.synthetic_rows:
        after_scoring(args.output, args.synthetic_rows, probe)
        return
    if not args.input:
        parser.error("--input is needed unless --synthetic-rows is given")
    config = screening.ScreenConfig(inputs=(args.input,), output=args.output,
                                    pseudonym_key_file=args.pseudonym_key_file,
                                    create_pseudonym_key=args.pseudonym_key_file is not None)
    plan = screening.prepare(config)
    probe.report("listing", files=plan.listing.entries)
    if args.listing_only:
        with plan.workspace:
            selection = screening.choose_files(plan, screening.run_connection(args.output, plan.workspace.name),
                                               "1970-01-01")
            probe.report("select_files", to_score=selection.files)
            ensure_ray()
            probe.report("ray started")
            dataset = screening.chosen_files_dataset(selection, config.decode_batch_size)
            probe.report("blocks put in the object store", blocks=dataset.num_blocks())
    else:
        for name in ("select_files", "predictions_dataset", "stage_predictions", "write_series", "count_outcomes"):
            probe.wrap(screening, name)
        probe.wrap(tables, "commit_run")
        record = screening.score_and_commit(plan)
        probe.report("end", rows=record.rows_written, series=record.series)
    sampler.running = False


if __name__ == "__main__":
    main()
