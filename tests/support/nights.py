"""A committed night written straight through the results store (no Ray): the rows given, staged and committed as a
run's driver commits them, for tests of what readers see; and the sample archive copied for tests that screen it
night after night."""

import contextlib
import datetime
import pathlib
import shutil

import pyarrow as pa
import pytest

from infra import storage
from pipeline.results import tables
from pipeline import schema as col
from tests.conftest import SAMPLES, TEST_KEY


def commit_night(output: str, run_id: str, run_date: str, predictions: list[dict], series: list[dict],
                 finished_at: datetime.datetime, run: dict | None = None) -> None:
    """Stage ``predictions`` and ``series`` rows (each completed with the run's id and date) and commit the run;
    ``run`` gives more columns of its ``runs`` row (its model and threshold, say)."""
    for table, rows in ((tables.PREDICTIONS, predictions), (tables.SERIES, series)):
        rows = [{col.RUN_ID: run_id, col.RUN_DATE: run_date, **row} for row in rows]
        staged = pa.Table.from_pylist(rows, schema=tables.TABLE_SCHEMAS[table])
        tables.write_parquet(staged, storage.join(tables.work_uri(output, run_id, table), "part-0.parquet"))
    tables.stage_run_row(output, {**(run or {}), col.RUN_ID: run_id, col.RUN_DATE: run_date,
                                  col.FINISHED_AT: finished_at})
    tables.commit_run(output, run_id)


@contextlib.contextmanager
def sample_archive_copy(root: pathlib.Path):
    """(archive, results): a copy of the sample archive under ``root`` and a results folder beside it (never inside
    it), with the test pseudonym key in ``PSEUDONYM_KEY`` until the block ends."""
    archive, output = root / "archive", root / "results"
    shutil.copytree(SAMPLES / "archive", archive)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PSEUDONYM_KEY", TEST_KEY)
        yield archive, output
