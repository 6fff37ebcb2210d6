"""Which files an incremental run scores: new, changed (size or modification time), or last hit by an error that
says nothing about the file; unchanged files scored by another model are counted, and rescored only when asked; a
re-run of a date carries over what the date's standing run scored of unchanged files with the same model. The
selection is a query joining the staged listing with what the tables know; it is run here on DuckDB."""

import datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet
import pytest

from pipeline.sources.listing import ListedFile, listing_batch, micros
from pipeline.screening import ScreenConfig
from pipeline.screening.choice import select_files

WHEN = datetime.datetime(2026, 11, 3, 2, 0, 0, 123456, tzinfo=datetime.timezone.utc)
MODEL, OTHER = "a" * 64, "b" * 64

FILES = [ListedFile("same.dcm", 100, WHEN), ListedFile("new.dcm", 5, WHEN), ListedFile("grown.dcm", 101, WHEN),
         ListedFile("touched.dcm", 100, WHEN + datetime.timedelta(microseconds=1)), ListedFile("failed.dcm", 100, WHEN),
         ListedFile("old-model.dcm", 100, WHEN), ListedFile("unlisted-size.dcm"),
         ListedFile("same.dcm", 100, WHEN)]  # named twice (two inputs overlap): listed once
KNOWN = pa.Table.from_pylist([
    {"source_uri": uri, "source_size": 100, "modified_us": micros(WHEN), "model_sha256": model, "retry": retry}
    for uri, model, retry in [("same.dcm", MODEL, False), ("grown.dcm", MODEL, False), ("touched.dcm", MODEL, False),
                              ("failed.dcm", MODEL, True), ("old-model.dcm", OTHER, False),
                              ("unlisted-size.dcm", MODEL, False)]])


def facts(uri: str, model: str = MODEL, retry: bool = False, size: int = 100) -> dict:
    return {"source_uri": uri, "source_size": size, "modified_us": micros(WHEN), "model_sha256": model, "retry": retry}


def carried(tmp_path, standing: list[dict], **options) -> tuple[dict, int, int]:
    """({file: verdict}, files to score, files carried over) of a re-run of a date whose standing run holds the
    rows ``standing`` describes."""
    connection = duckdb.connect()
    connection.register("listing", listing_batch(FILES))
    connection.register("known_files", KNOWN)
    connection.register("standing_files", pa.Table.from_pylist(standing, schema=KNOWN.schema))
    selection = select_files(ScreenConfig(inputs=("x",), output="o", **options), connection, "listing",
                             "SELECT * FROM known_files", MODEL, str(tmp_path / "verdicts.parquet"),
                             standing="SELECT * FROM standing_files")
    verdicts = pa.parquet.read_table(selection.verdicts).to_pylist()
    return {row["source_uri"]: row["verdict"] for row in verdicts}, selection.files, selection.carried_over


@pytest.fixture
def choose(tmp_path):
    def chosen(**options) -> tuple[list[str], int, int, int]:
        connection = duckdb.connect()
        connection.register("listing", listing_batch(FILES))
        connection.register("known_files", KNOWN)
        selection = select_files(ScreenConfig(inputs=("x",), output="o", **options), connection, "listing",
                                 "SELECT * FROM known_files", MODEL, str(tmp_path / "verdicts.parquet"))
        uris = [uri for block in selection.blocks(2) for uri in block["source_uri"].to_pylist()]
        assert len(uris) == selection.files
        return sorted(uris), selection.unchanged, selection.other_model, selection.listed
    return chosen


def test_only_new_changed_and_retried_files_are_scored(choose):
    assert choose() == (sorted(["new.dcm", "grown.dcm", "touched.dcm", "failed.dcm", "unlisted-size.dcm"]), 2, 1, 7)


def test_a_model_change_is_counted_and_acted_on_only_when_asked(choose):
    uris, unchanged, other_model, _ = choose(rescore_on_model_change=True)
    assert "old-model.dcm" in uris and (unchanged, other_model) == (1, 1)


def test_full_scores_everything_once(choose):
    assert choose(full=True) == (sorted({file.uri for file in FILES}), 0, 0, 7)


def test_chosen_files_keep_their_listed_size_and_time_in_blocks_of_the_asked_size(choose, tmp_path):
    choose()
    from pipeline.screening.choice import Selection

    selection = Selection(str(tmp_path / "verdicts.parquet"), ("new_or_changed",), "incremental", 7, 5)
    blocks = list(selection.blocks(2))
    assert [block.num_rows for block in blocks] == [2, 2, 1]
    rows = {row["source_uri"]: row for block in blocks for row in block.to_pylist()}
    assert rows["new.dcm"]["source_size"] == 5 and rows["new.dcm"]["source_modified"] == micros(WHEN)
    assert rows["unlisted-size.dcm"]["source_size"] == -1 and rows["unlisted-size.dcm"]["source_modified"] == -1


def test_modification_times_compare_exactly_to_the_microsecond():
    assert micros(WHEN) == 1793671200123456
    assert micros(None) == -1


def test_a_rerun_of_a_date_carries_over_what_its_standing_run_scored_of_unchanged_files_with_this_model(tmp_path):
    standing = [facts("new.dcm", size=5), facts("touched.dcm"), facts("same.dcm"), facts("failed.dcm", retry=True),
                facts("old-model.dcm", model=OTHER), facts("unlisted-size.dcm")]
    verdicts, to_score, carried_over = carried(tmp_path, standing)
    assert (verdicts["new.dcm"], verdicts["same.dcm"]) == ("carried_over", "carried_over")
    assert verdicts["touched.dcm"] == verdicts["failed.dcm"] == verdicts["unlisted-size.dcm"] == "new_or_changed"
    assert verdicts["old-model.dcm"] == "other_model" and verdicts["grown.dcm"] == "new_or_changed"
    assert (to_score, carried_over) == (4, 2)


def test_a_full_run_or_another_model_carries_nothing_over(tmp_path):
    standing = [facts(file.uri, size=file.size) for file in FILES]
    assert carried(tmp_path, standing, full=True)[1:] == (7, 0)
    verdicts, _, carried_over = carried(tmp_path, [facts("new.dcm", model=OTHER, size=5)])
    assert verdicts["new.dcm"] == "new_or_changed" and carried_over == 0
