"""Which files an incremental run scores: new, changed (size or modification time), or last hit by an error that
says nothing about the file; unchanged files scored by another model are counted, and rescored only when asked."""

import datetime

from pipeline.listing import ListedFile
from pipeline.screen import ScreenConfig, micros, select_files
from pipeline.views import ScoredFile

WHEN = datetime.datetime(2026, 11, 3, 2, 0, 0, 123456, tzinfo=datetime.timezone.utc)
MODEL, OTHER = "a" * 64, "b" * 64


def known(size=100, modified=WHEN, model=MODEL, retry=False) -> ScoredFile:
    return ScoredFile(size, micros(modified), model, retry)


FILES = [ListedFile("same.dcm", 100, WHEN), ListedFile("new.dcm", 5, WHEN), ListedFile("grown.dcm", 101, WHEN),
         ListedFile("touched.dcm", 100, WHEN + datetime.timedelta(microseconds=1)), ListedFile("failed.dcm", 100, WHEN),
         ListedFile("old-model.dcm", 100, WHEN), ListedFile("unlisted-size.dcm")]
KNOWN = {"same.dcm": known(), "grown.dcm": known(), "touched.dcm": known(), "failed.dcm": known(retry=True),
         "old-model.dcm": known(model=OTHER), "unlisted-size.dcm": known()}


def chosen(**options) -> tuple[list[str], int, int]:
    selection = select_files(ScreenConfig(inputs=("x",), output="o", **options), FILES, KNOWN, MODEL)
    return [file.uri for file in selection.files], selection.unchanged, selection.other_model


def test_only_new_changed_and_retried_files_are_scored():
    assert chosen() == (["new.dcm", "grown.dcm", "touched.dcm", "failed.dcm", "unlisted-size.dcm"], 2, 1)


def test_a_model_change_is_counted_and_acted_on_only_when_asked():
    uris, unchanged, other_model = chosen(rescore_on_model_change=True)
    assert "old-model.dcm" in uris and (unchanged, other_model) == (1, 1)


def test_full_scores_everything():
    assert chosen(full=True) == ([file.uri for file in FILES], 0, 0)


def test_modification_times_compare_exactly_to_the_microsecond():
    assert micros(WHEN) == 1793671200123456
    assert micros(None) == -1
