"""Where a screening run's findings go, checked before any work. In: the destination as the job's option gives it,
a PACS's DICOMweb root written ``dicomweb+https://host/dicom-web`` (or ``dicomweb+http://``) or a folder or
``s3://`` prefix for ``.dcm`` files, with where the PACS credentials are (a JSON file, else the ``DICOMWEB_*``
environment variables: ``pipeline.dicomweb.client``); out: a ``Destination`` that stores each series' datasets
(``pipeline.dicomweb.store``) and counts what became of them.

``open_destination`` checks it as ``prepare`` checks an S3 endpoint: a PACS must answer and take the credentials
(one search that can match nothing, so no patient's data comes back, with short timeouts and one retry: a wrong
password or a dead server is named within seconds); a folder or prefix must be writable and outside every input
(else every night would screen the reports it wrote). What cannot work raises ``DestinationError``, a
``RunNotStartedError`` whose one sentence says what to fix and shows no secret.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from infra import storage
from pipeline.dicomweb.client import (AccessRefusedError, ClientSettings, Credentials, DicomwebConfigError,
                                      dicomweb_client, load_credentials)
from pipeline.dicomweb.findings import derived_uid
from pipeline.dicomweb.store import StoreSummary, store_to_pacs, write_folder
from pipeline.errors import RunNotStartedError
from pipeline.results.tables import check_writable
from pipeline.sources.listing import inside
from pipeline.sources.pacs import PacsAddress, is_dicomweb

# the probe: one search for a study no PACS holds, a short wait and one retry
PROBE_SETTINGS = {"retries": 1, "backoff_seconds": 0.2, "connect_timeout_seconds": 3.0, "read_timeout_seconds": 10.0}
PROBE_STUDY_UID = derived_uid("destination probe")
STORE_WORKERS = 2  # series stored at once in a PACS


class DestinationError(RunNotStartedError):
    """A findings destination that cannot work; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Destination:
    """A checked destination: a PACS (``client`` set) or a folder or prefix (``location``)."""

    location: str
    client: DICOMwebClient | None = dataclasses.field(default=None, repr=False, compare=False)

    def store(self, reports: Mapping[str, Sequence[pydicom.Dataset]]) -> StoreSummary:
        """Each series' datasets stored or written; the caller logs the summary. A PACS that refuses the
        credentials raises ``AccessRefusedError``."""
        if self.client is not None:
            return store_to_pacs(self.client, reports, workers=STORE_WORKERS, summary_line=False)
        return write_folder(reports, self.location, summary_line=False)


def open_destination(location: str, credentials_file: str | None = None, inputs: Iterable[str] = ()) -> Destination:
    """The destination ``location`` names, checked: a PACS answers and takes the credentials (from
    ``credentials_file``, else the environment), a folder is writable and outside each of ``inputs``."""
    if is_dicomweb(location):
        return pacs_destination(location, credentials_file)
    if "://" in location and not storage.is_s3(location):
        raise DestinationError(f"the findings destination {location} is neither a DICOMweb service "
                               f"(dicomweb+https://host/dicom-web) nor a folder or s3:// prefix")
    return folder_destination(location, inputs)


def pacs_destination(location: str, credentials_file: str | None) -> Destination:
    try:
        address = PacsAddress.parse(location)
    except storage.StorageError as error:
        raise DestinationError(f"findings destination: {error}") from None
    if address.study:
        raise DestinationError(f"the findings destination {location} names a study: give the PACS's DICOMweb root "
                               f"(dicomweb+https://host/dicom-web); each report goes to its image's study")
    url = address.server.rstrip("/")
    try:
        credentials = load_credentials(credentials_file)
        probe(ClientSettings(url, **PROBE_SETTINGS), credentials)
        return Destination(location, dicomweb_client(ClientSettings(url), credentials))
    except (DicomwebConfigError, AccessRefusedError) as error:
        raise DestinationError(f"findings destination: {error}") from error


def probe(settings: ClientSettings, credentials: Credentials) -> None:
    """One search (QIDO-RS) for a study no PACS holds: the server answers, with the credentials, as a DICOMweb
    service; ``AccessRefusedError`` when it refuses them."""
    host = urllib.parse.urlsplit(settings.url).netloc
    try:
        dicomweb_client(settings, credentials).search_for_studies(
            search_filters={"StudyInstanceUID": PROBE_STUDY_UID}, limit=1)
    except requests.HTTPError as error:
        answer = error.response
        raise DestinationError(f"the findings destination at {host} gave HTTP {answer.status_code} {answer.reason} "
                               f"to a DICOMweb search: is {settings.url} the server's DICOMweb root?") from error
    except requests.RequestException as error:
        raise DestinationError(f"cannot reach the findings destination's DICOMweb server at {host} "
                               f"({type(error).__name__}): is it running, and is the address right?") from error


def folder_destination(location: str, inputs: Iterable[str]) -> Destination:
    for folder in inputs:
        if inside(location, folder):
            raise DestinationError(f"the findings destination {location} is inside the input {folder}: every night "
                                   f"would screen the reports it wrote; choose a folder outside every input")
    try:
        storage.check_reachable(location)
        check_writable(location)
    except storage.StorageError as error:
        raise DestinationError(f"the findings destination {location} cannot be written: {error}") from error
    return Destination(location)
