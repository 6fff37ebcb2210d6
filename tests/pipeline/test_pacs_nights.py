"""Screening straight from a real PACS (Orthanc with DICOMweb on localhost) on a local Ray: the sample archive's DICOM
files, with a CT series added to the glioma study, are stored in the PACS and screened from it and from disk. The
PACS night gives the disk night's rows, instance by instance (classes, probabilities within 1e-4, keys, series);
each row names its instance by its address and no patient identity; the CT series is skipped on its search
attributes and never downloaded; a study of CT alone is not even listed; searches are paged; no more requests reach
the PACS at once than the bound allows; the next night retrieves nothing again; and the morning report retrieves
the flagged slices again to show them.

The runs reach the PACS through a recording proxy (``tests.support.http_faults``), which counts the requests."""

import dataclasses
import re
import urllib.parse

import numpy as np
import pydicom
import pytest

from pipeline import schema as col
from pipeline.dicomweb.client import load_credentials
from pipeline.report import morning
from pipeline.results import tables
from pipeline.screening import RunRecord, ScreenConfig, run_screening
from pipeline.sources import paths
from pipeline.sources.listing import micros
from pipeline.sources.pacs import LISTED_MODIFIED, PAGE_SIZE_VARIABLE, PacsOptions
from tests.conftest import TEST_KEY, skip_without_orthanc
from tests.support.http_faults import FaultyProxy
from tests.support.nights import sample_archive_copy
from tools.local_pacs import orthanc_server
from tests.support.pacs_archive import (SAMPLE_STUDY_DATES, by_instance, credentials_file, made_series, pacs_input,
                                        sop_instance_uid, store_files)

pytestmark = pytest.mark.slow

WADO = r"/instances/[0-9.]+$"  # an instance's retrieval (a search ends in /instances?...)
COMPARED = (col.STATUS, col.ERROR_CODE, col.FILE_FORMAT, col.SELECTION_RULE, col.SKIP_REASON, col.PREDICTED_CLASS,
            col.FLAGGED, col.OOD, col.PATIENT_KEY, col.STUDY_KEY, col.SERIES_KEY, col.STUDY_DATE, col.MODALITY,
            col.INSTANCE_NUMBER)
SERIES_COMPARED = (col.PATIENT_KEY, col.STUDY_KEY, col.STUDY_DATE, col.MODALITY, col.SLICES, col.SLICES_SCORED,
                   col.SLICES_SKIPPED, col.PREDICTED_CLASS, col.FLAGGED)


@dataclasses.dataclass
class Nights:
    disk: RunRecord
    first: RunRecord
    second: RunRecord
    disk_rows: dict
    pacs_rows: dict
    disk_series: dict
    pacs_series: dict
    first_requests: list
    second_requests: list
    most_in_flight: int
    ct_uids: set
    ct_only_study: str
    root: str
    pacs_output: str
    credentials: str
    hidden: tuple  # a night and the next with --pseudonymize-paths, and the first's stored source_uris


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, orthanc_reaper):
    skip_without_orthanc()
    with orthanc_server(tmp_path_factory.mktemp("pacs")) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(pacs):
    proxy = FaultyProxy(pacs.url)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def nights(pacs, proxy, model_uri, ray_local, tmp_path_factory) -> Nights:
    """The archive (with a CT series in the glioma study) screened from disk; stored in the PACS with a study of CT
    alone; screened from the PACS (searches paged two results at a time, one request at a time a process), then again
    the next night."""
    root = tmp_path_factory.mktemp("pacs-nights")
    with sample_archive_copy(root) as (archive, disk_output), pytest.MonkeyPatch.context() as patch:
        patch.setenv(PAGE_SIZE_VARIABLE, "2")
        ct = made_series(archive / "dicom" / "ct-in-the-glioma-study", "axial-glioma", Modality="CT")
        ct_only = made_series(root / "ct-only-study", "axial-glioma-t1post", new_study=True, Modality="CT")
        store_files(pacs, [*sorted((archive / "dicom").rglob("*.dcm")), *ct_only])
        disk = run_screening(ScreenConfig(inputs=(str(archive / "dicom"),), output=str(disk_output),
                                          model=model_uri, run_date="2026-11-05"))
        pacs_output, root_uri = str(root / "pacs-results"), pacs_input(proxy.endpoint)
        common = dict(inputs=(root_uri,), output=pacs_output, model=model_uri,
                      study_date_from=SAMPLE_STUDY_DATES[0], study_date_to=SAMPLE_STUDY_DATES[1],
                      dicomweb_credentials_file=credentials_file(root, pacs))
        first = run_screening(ScreenConfig(**common, run_date="2026-11-05", dicomweb_max_connections=1,
                                           decode_batch_size=6))
        first_requests, most_in_flight = list(proxy.requests), proxy.most_in_flight
        second = run_screening(ScreenConfig(**common, run_date="2026-11-06"))
        second_requests = proxy.requests[len(first_requests):]
        hidden = {**common, "output": str(root / "hidden-results"), "pseudonymize_paths": True}
        hidden_nights = [run_screening(ScreenConfig(**hidden, run_date=date)) for date in ("2026-11-05", "2026-11-06")]
        hidden_uris = [row[col.SOURCE_URI] for row in tables.read_table(hidden["output"], tables.PREDICTIONS,
                                                                          [col.SOURCE_URI]).to_pylist()]
    uid_of_path = {str(path): sop_instance_uid(path) for path in (archive / "dicom").rglob("*.dcm")}
    return Nights(disk, first, second,
                  by_instance(tables.read_table(str(disk_output), tables.PREDICTIONS).to_pylist(), uid_of_path.get),
                  by_instance(tables.read_table(pacs_output, tables.PREDICTIONS).to_pylist(), last_segment),
                  series_by_key(str(disk_output)), series_by_key(pacs_output), first_requests, second_requests,
                  most_in_flight, {sop_instance_uid(path) for path in ct}, study_uid(ct_only[0]), root_uri,
                  pacs_output, common["dicomweb_credentials_file"], (*hidden_nights, hidden_uris))


def last_segment(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def study_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def series_by_key(output: str) -> dict[str, dict]:
    return {row[col.SERIES_KEY]: row for row in tables.read_table(output, tables.SERIES).to_pylist()}


def test_screening_from_the_pacs_gives_the_rows_screening_the_same_files_from_disk_gives(nights):
    assert nights.pacs_rows.keys() == nights.disk_rows.keys() and len(nights.pacs_rows) == 17 + 5
    for key, disk in nights.disk_rows.items():
        pacs = nights.pacs_rows[key]
        assert {name: pacs[name] for name in COMPARED} == {name: disk[name] for name in COMPARED}, key
        for name in (*col.PROBABILITY_COLUMNS, col.TUMOR_PROBABILITY, col.OOD_SCORE):
            assert (pacs[name] is None) == (disk[name] is None), (key, name)
            assert disk[name] is None or pacs[name] == pytest.approx(disk[name], abs=1e-4), (key, name)
        if pacs[col.STATUS] == col.STATUS_OK:  # retrieved as the archive stores it: the very bytes of the file
            assert (pacs[col.SOURCE_SHA256], pacs[col.SLICE_POSITION]) == (disk[col.SOURCE_SHA256],
                                                                        disk[col.SLICE_POSITION])
    summary = [(run.rows_written, run.rows_scored, run.rows_flagged, run.rows_skipped, run.series,
                run.series_flagged) for run in (nights.disk, nights.first)]
    assert summary[0] == summary[1] and nights.first.rows_error == 0


def test_the_pacs_night_summarises_each_series_as_the_disk_night_does(nights):
    assert nights.pacs_series.keys() == nights.disk_series.keys() and len(nights.pacs_series) == 5
    for key, disk in nights.disk_series.items():
        pacs = nights.pacs_series[key]
        assert {name: pacs[name] for name in SERIES_COMPARED} == {name: disk[name] for name in SERIES_COMPARED}
        if disk[col.SLICES_SCORED]:
            assert pacs[col.TUMOR_PROBABILITY] == pytest.approx(disk[col.TUMOR_PROBABILITY], abs=1e-4)
            assert [last_segment(uri) for uri in pacs[col.ORDERED_SOURCE_URIS]] == [
                sop_from_disk(nights, uri) for uri in disk[col.ORDERED_SOURCE_URIS]]
            assert pacs[col.MOST_SUSPICIOUS_SLICE_INDEX] == disk[col.MOST_SUSPICIOUS_SLICE_INDEX]


def sop_from_disk(nights: Nights, path: str) -> str:
    return next(uid for (uid, _), row in nights.disk_rows.items() if row[col.SOURCE_URI] == path)


def test_each_row_names_its_instance_by_its_address_and_no_patient_identity(nights):
    address = re.compile(re.escape(nights.root) + r"/studies/[0-9.]+/series/[0-9.]+/instances/[0-9.]+")
    for row in nights.pacs_rows.values():
        assert address.fullmatch(row[col.SOURCE_URI])
        assert row[col.SOURCE_MODIFIED] == LISTED_MODIFIED and micros(row[col.SOURCE_MODIFIED]) == 0
        assert row[col.SOURCE_SIZE] > 0  # the pixels' size, as the search tells it
    written = " ".join(str(value) for table in (nights.pacs_rows.values(), nights.pacs_series.values())
                       for row in table for value in row.values())
    for identity in ("SAMPLE-MRN", "SAMPLE^", "SAMPLEACC", "19600115"):  # the samples' patient IDs, names, dates
        assert identity not in written


def test_a_ct_series_is_skipped_on_its_search_and_never_downloaded(nights):
    ct_rows = [row for (uid, _), row in nights.pacs_rows.items() if uid in nights.ct_uids]
    assert len(ct_rows) == 5
    for row in ct_rows:
        assert (row[col.STATUS], row[col.SELECTION_RULE], row[col.SKIP_REASON]) == (
            "skipped", "not_mr", "modality CT, not MR")
        assert row[col.SOURCE_SHA256] is None and row[col.SERIES_KEY] and row[col.INSTANCE_NUMBER] is not None
    retrieved = {last_segment(path) for path in re_requested(nights.first_requests, WADO)}
    assert retrieved and not retrieved & nights.ct_uids
    assert len(retrieved) == 14  # the sample archive's DICOM files, each retrieved once
    assert not any(nights.ct_only_study in row[col.SOURCE_URI] for row in nights.pacs_rows.values())


def re_requested(requests: list, pattern: str, method: str = "GET") -> list[str]:
    return [path for verb, path, _ in requests if verb == method and re.search(pattern, path)]


def test_searches_are_paged_until_an_empty_page(nights):
    pages = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
             for path in re_requested(nights.first_requests, r"[?&]offset=")]
    assert {page["limit"][0] for page in pages} == {"2"} and {"0", "2", "4"} <= {page["offset"][0] for page in pages}
    assert nights.first.files_listed == 14 + 5  # the sample studies' 4 series, 1 to 5 instances each, and the CT


def test_no_more_requests_reach_the_pacs_at_once_than_each_process_may_send(nights):
    assert 1 <= nights.most_in_flight <= 2  # one connection each for the two scoring actors


def test_the_next_night_retrieves_nothing_again(nights):
    second = nights.second
    assert (second.files_listed, second.files_unchanged, second.rows_written) == (19, 19, 0)
    assert re_requested(nights.second_requests, WADO) == [] and re_requested(nights.second_requests, r"\?")


def test_the_morning_report_retrieves_the_flagged_slices_again_from_the_pacs(nights):
    blank = lambda images, info: [np.zeros((*image.shape, 3), np.uint8) for image in images]  # no TensorFlow here
    options = PacsOptions(load_credentials(nights.credentials))
    _, document = morning.build_report(nights.pacs_output, nights.first.run_id, TEST_KEY.encode(), blank, options)
    assert document.count('alt="deciding slice"') == nights.first.series_flagged > 0
    _, without = morning.build_report(nights.pacs_output, nights.first.run_id, TEST_KEY.encode(), blank)
    assert 'alt="deciding slice"' not in without  # no credentials: the slices cannot be retrieved, nor shown


def test_pseudonymised_paths_hide_all_but_the_instance_uid_and_the_key_finds_the_instance_again(nights):
    first, again, uris = nights.hidden
    assert again.files_unchanged == first.files_listed == 19 and again.rows_written == 0
    hidden = re.compile(re.escape(nights.root) + r"(/d-[0-9a-f]{16}){5}/[0-9.]+")
    assert uris and all(hidden.fullmatch(uri) for uri in uris)
    options = PacsOptions(load_credentials(nights.credentials))
    found = {paths.resolve_pseudonymized(uri, TEST_KEY.encode(), options) for uri in uris}
    assert found == {row[col.SOURCE_URI] for row in nights.pacs_rows.values()}
    assert paths.resolve_pseudonymized(uris[0], b"another-key-0123456789abcdef", options) is None
