"""Screening reports out: written to a folder (local or ``s3://``) as ``.dcm`` files, or stored in a PACS with
STOW-RS. In: each series' datasets (``pipeline.dicomweb.reports.report_datasets``) under a key the caller chooses
(its ``series_key``, say); out: a ``StoreSummary`` counting, per series, the instances stored and failed.

One series that cannot be written or stored never stops the others: it is counted, with the reason, and logged
without naming it; the caller reports the failures. Credentials the PACS refuses (HTTP 401 or 403) stop the whole
store with an ``AccessRefusedError``: every series would fail alike, and each refused login counts towards locking
the account. A file's name is its object's modality and SOP Instance UID, so writing a run again replaces its files,
as storing it again replaces its instances in a PACS that overwrites.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from infra import storage
from pipeline.errors import describe_failure

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SeriesStored:
    """What became of one series' datasets: how many were stored and how many failed, and why."""

    key: str
    stored: int
    failed: int
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class StoreSummary:
    series: tuple[SeriesStored, ...]

    @property
    def series_stored(self) -> int:
        """Series whose every dataset was stored."""
        return sum(1 for outcome in self.series if outcome.failed == 0)

    @property
    def series_failed(self) -> int:
        return len(self.series) - self.series_stored

    @property
    def instances_stored(self) -> int:
        return sum(outcome.stored for outcome in self.series)

    @property
    def instances_failed(self) -> int:
        return sum(outcome.failed for outcome in self.series)

    def by_key(self) -> dict[str, SeriesStored]:
        return {outcome.key: outcome for outcome in self.series}


def file_name(dataset: pydicom.Dataset) -> str:
    """``<Modality>-<SOPInstanceUID>.dcm``: deterministic, and naming no patient."""
    return f"{dataset.Modality}-{dataset.SOPInstanceUID}.dcm"


def encoded(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def write_folder(reports: Mapping[str, Sequence[pydicom.Dataset]], folder: str,
                 summary_line: bool = True) -> StoreSummary:
    """Each series' datasets as files in ``folder`` (a local folder or an ``s3://`` prefix), replacing files of
    the same name; logs a summary line unless its caller logs its own (``summary_line``)."""
    summary = StoreSummary(tuple(write_series(key, datasets, folder) for key, datasets in reports.items()))
    if summary_line:
        log_summary(summary, f"written to {folder}")
    return summary


def write_series(key: str, datasets: Sequence[pydicom.Dataset], folder: str) -> SeriesStored:
    written = 0
    for dataset in datasets:
        try:
            storage.write_bytes(storage.join(folder, file_name(dataset)), encoded(dataset))
        except storage.StorageError as error:
            return series_failed(key, written, len(datasets) - written, describe_failure(error))
        except (ValueError, AttributeError) as error:
            return series_failed(key, written, len(datasets) - written, unencodable(error))
        written += 1
    return SeriesStored(key, written, 0)


def store_to_pacs(client: DICOMwebClient, reports: Mapping[str, Sequence[pydicom.Dataset]],
                  workers: int = 1, summary_line: bool = True) -> StoreSummary:
    """Each series' datasets in one STOW-RS request, ``workers`` series at a time (the client's session bounds the
    connections in any case). A client from ``pipeline.dicomweb.client`` raises ``AccessRefusedError`` when the
    server refuses the credentials, and that stops the store. Logs a summary line unless its caller logs its own
    (``summary_line``)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = pool.map(lambda item: store_series(client, *item), reports.items())
        summary = StoreSummary(tuple(outcomes))
    if summary_line:
        log_summary(summary, f"stored in the PACS at {client.base_url}")
    return summary


def store_series(client: DICOMwebClient, key: str, datasets: Sequence[pydicom.Dataset]) -> SeriesStored:
    try:
        answer = client.store_instances(list(datasets))
    except requests.HTTPError as error:
        return series_failed(key, 0, len(datasets), f"HTTP {error.response.status_code} {error.response.reason}")
    except requests.RequestException as error:
        return series_failed(key, 0, len(datasets), describe_failure(error))
    except (ValueError, AttributeError) as error:
        return series_failed(key, 0, len(datasets), unencodable(error))
    return stow_outcome(key, len(datasets), answer)


def unencodable(error: Exception) -> str:
    """A dataset that could not be encoded (or an answer not read), said without pydicom's message, which may quote
    a header value."""
    return f"{type(error).__name__} while encoding the datasets or reading the answer (its message is withheld: it " \
           f"may quote a header value)"


def stow_outcome(key: str, sent: int, answer: pydicom.Dataset) -> SeriesStored:
    """A STOW-RS answer counted: the instances it lists as stored (all, when it lists none either way); the rest
    failed."""
    if "ReferencedSOPSequence" in answer:
        stored = len(answer.ReferencedSOPSequence)
    else:
        stored = sent - len(answer.get("FailedSOPSequence", []))
    if stored < sent:
        return series_failed(key, stored, sent - stored, f"the server stored {stored} of {sent} instance(s)")
    return SeriesStored(key, stored, 0)


def series_failed(key: str, stored: int, failed: int, error: str) -> SeriesStored:
    """A series not wholly written or stored, logged without its key or any identifier."""
    logger.warning("a series' report was not wholly stored (%d of %d instance(s)): %s", stored, stored + failed,
                   error)
    return SeriesStored(key, stored, failed, error)


def log_summary(summary: StoreSummary, where: str) -> None:
    logger.info("reports of %d of %d series %s (%d instance(s)); %d series failed", summary.series_stored,
                len(summary.series), where, summary.instances_stored, summary.series_failed)
