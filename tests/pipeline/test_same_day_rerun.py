"""A re-run of a date on a local Ray with real Delta tables: it rescores only the files changed since the date's
standing run and carries the other rows over as its own (keeping when they were scored), the summary says which
run stands for the date, and a re-run with another model carries nothing over."""

import deltalake
import pytest

from pipeline.results import queries, tables, views
from pipeline.screening import ScreenConfig, run_screening
from tests.conftest import ROOT
from tests.support.nights import sample_archive_copy

pytestmark = pytest.mark.slow

DATE = "2026-11-20"
OTHER_MODEL = str(ROOT / "models" / "mri-pool-v1")


def date_rows(output, table: str = "predictions") -> list[dict]:
    """The date's rows as the Delta table's latest version holds them, read with deltalake alone."""
    rows = deltalake.DeltaTable(str(output / table)).to_pyarrow_table().to_pylist()
    return [row for row in rows if row["run_date"] == DATE]


@pytest.fixture(scope="module")
def reruns(model_uri, ray_local, tmp_path_factory):
    """The sample archive scored on DATE; one loose image changed; DATE run again; then again with another model.
    Each step's rows are read back before the next replaces them."""
    with sample_archive_copy(tmp_path_factory.mktemp("same-day")) as (archive, output):
        config = dict(inputs=(str(archive),), output=str(output), run_date=DATE)
        first = run_screening(ScreenConfig(**config, model=model_uri))
        first_rows = date_rows(output)
        changed = sorted((archive / "loose").glob("*.jpg"))[0]
        changed.write_bytes(sorted((archive / "loose").glob("*.jpg"))[1].read_bytes())
        again = run_screening(ScreenConfig(**config, model=model_uri))
        again_rows, again_series = date_rows(output), date_rows(output, "series")
        summary = queries.summary(views.connect(str(output)), queries.DateRange()).to_pylist()
        other = run_screening(ScreenConfig(**config, model=OTHER_MODEL))
    return output, str(changed), (first, again, other), (first_rows, again_rows, again_series), summary


def test_a_rerun_rescores_the_changed_file_and_carries_the_rest_over(reruns):
    _, changed, (first, again, _), (first_rows, again_rows, _), _ = reruns
    assert (again.files_listed, again.files_carried_over, again.files_unchanged) == (first.files_listed,
                                                                                     first.files_listed - 1, 0)
    assert again.rows_carried_over == first.rows_written - 1 and again.rows_written == first.rows_written
    assert {row["run_id"] for row in again_rows} == {again.run_id} and len(again_rows) == len(first_rows)
    before = {(row["source_uri"], row["frame_index"]): row for row in first_rows}
    rescored = [row for row in again_rows if row["scored_at"] != before[row["source_uri"], row["frame_index"]]
                ["scored_at"]]
    assert [row["source_uri"] for row in rescored] == [changed]
    for row in again_rows:  # a carried row is the standing run's row under the new run id
        if row["source_uri"] != changed:
            assert row == {**before[row["source_uri"], row["frame_index"]], "run_id": again.run_id}


def test_the_rerun_summarises_every_series_of_the_date_as_its_own(reruns):
    _, _, (first, again, _), (_, _, again_series), _ = reruns
    assert {row["run_id"] for row in again_series} == {again.run_id}
    assert len(again_series) == again.series == first.series == 4
    assert sum(row["flagged"] for row in again_series) == again.series_flagged == first.series_flagged


def test_the_summary_marks_the_run_that_stands_for_the_date(reruns):
    output, _, (first, again, _), _, summary = reruns
    assert [(row["run_id"], row["standing"]) for row in summary] == [(first.run_id, False), (again.run_id, True)]
    assert [row["files_carried_over"] for row in summary] == [0, first.files_listed - 1]
    runs = {row["run_id"]: row for row in tables.read_table(str(output), tables.RUNS).to_pylist()}
    assert runs[again.run_id]["rows_carried_over"] == again.rows_carried_over > 0


def test_a_rerun_with_another_model_rescores_everything(reruns):
    output, _, (first, _, other), _, _ = reruns
    assert other.files_carried_over == other.rows_carried_over == 0 and other.rows_written == first.rows_written
    rows = date_rows(output)
    assert {row["model_version"] for row in rows} == {"mri-pool-v1"} and {row["run_id"] for row in rows} == {
        other.run_id}
