"""A PACS as a source of images, over DICOMweb: its searches (QIDO-RS) list a night's instances, and each instance is
retrieved (WADO-RS) by the scoring stage's reader, as a file is read from disk or S3.

An input is the server's DICOMweb root written ``dicomweb+http://host:port/dicom-web`` (or ``dicomweb+https://``);
it may name one study, series or instance under it (``.../studies/<uid>[/series/<uid>[/instances/<uid>]]``). A root
is searched for studies of the run's study dates holding one of its modalities (``PacsOptions``), then their series,
then their instances, each search paged (``limit``/``offset``) until the server answers an empty page. Each instance is listed
as ``<root>/studies/<study>/series/<series>/instances/<sop>``: UIDs only, and the address that finds it again.

An instance is listed with a size estimated from its search attributes (Rows x Columns x BitsAllocated/8 x frames:
what the reader budgets its read-ahead by) and the modification time 1970-01-01T00:00Z: a DICOM instance never
changes under its SOP Instance UID, so an incremental night treats an instance it scored before as unchanged and
does not retrieve it again.

Before an instance is retrieved, its study's and series' search attributes (``SeriesAttributes``: Modality,
SeriesDescription, BodyPartExamined, StudyDescription...) go to the selection rules
(``SelectionRules.decide_before_retrieval``): a series they skip (a CT series, a knee MRI) is never downloaded.
Everything here talks to the server through one ``Pacs`` a process and server: at most ``max_connections``
requests at once, at most ``requests_per_second`` when set, retries with back-off on 429 and 5xx and dropped
connections (``pipeline.dicomweb.client``). Credentials come from a file or the environment, never a command line;
TLS is verified, against ``ca_bundle`` when given. What fails raises ``StorageError`` naming the instance or the
server, never a server's answer (which may quote the patient); a 401 or 403 raises ``PacsRefusedError``, a 404
``InstanceGoneError``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import logging
import os
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from typing import Iterator, Mapping

import pydicom
import requests

from infra import storage
from pipeline.dicomweb.client import (AccessRefusedError, ClientSettings, Credentials, DicomwebConfigError,
                                      dicomweb_session)

logger = logging.getLogger(__name__)

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
PREFIX = "dicomweb+"
UID = r"[0-9]+(?:\.[0-9]+)*"
ADDRESS = re.compile(rf"(?P<root>dicomweb\+https?://(?:(?!/studies(?:/|$)).)+?)"
                     rf"(?:/studies/(?P<study>{UID})(?:/series/(?P<series>{UID})"
                     rf"(?:/instances/(?P<instance>{UID}))?)?)?/?")
JSON = "application/dicom+json, application/json"
INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored: the archive's own bytes
PAGE_SIZE_VARIABLE = "MRI_SCREEN_DICOMWEB_PAGE_SIZE"  # results a search asks for at a time (default 500)
MAX_CONNECTIONS = 4  # requests at once, a process and server (a CPU cluster of n actors: 4n at most)
PROBE_TIMEOUT_S = 3.0
SERIES_CACHED = 4096  # series whose search attributes a process keeps
# search attributes that belong to the study or the series, so they hold for each of its instances alike
STUDY_KEYWORDS = frozenset({"StudyDate", "StudyTime", "StudyDescription", "StudyID", "ModalitiesInStudy",
                            "PatientID", "StudyInstanceUID"})
SERIES_KEYWORDS = frozenset({"Modality", "SeriesDescription", "BodyPartExamined", "ProtocolName", "SeriesNumber",
                             "Laterality", "SeriesDate", "SeriesInstanceUID"})


class PacsRefusedError(storage.StorageError):
    """The server refused the credentials (HTTP 401 or 403)."""


class InstanceGoneError(storage.StorageError):
    """The server has no such instance (HTTP 404): deleted since the search, say."""


def is_dicomweb(uri: str) -> bool:
    return uri.startswith(SCHEMES)


@dataclasses.dataclass(frozen=True)
class PacsAddress:
    """A DICOMweb root (as written, with its ``dicomweb+`` prefix), and under it a study, series or instance."""

    root: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @classmethod
    def parse(cls, uri: str) -> PacsAddress:
        match = ADDRESS.fullmatch(uri) if is_dicomweb(uri) else None
        if match is None or "?" in uri or "#" in uri:
            raise storage.StorageError(f"{uri} is not a DICOMweb address: write dicomweb+https://host/dicom-web, or "
                                       f"a study, series or instance under it (.../studies/<uid>/series/<uid>"
                                       f"/instances/<uid>)")
        return cls(match["root"], match["study"], match["series"], match["instance"])

    @classmethod
    def of_instance(cls, uri: str) -> PacsAddress:
        """The address of the instance ``uri`` names; StorageError when it names none."""
        address = cls.parse(uri)
        if not address.instance:
            raise storage.StorageError(f"{uri} names no DICOM instance")
        return address

    @property
    def server(self) -> str:
        """The root as an HTTP URL."""
        return self.root[len(PREFIX):]

    @property
    def path(self) -> str:
        """The resource below the root: ``/studies/<uid>/series/<uid>/instances/<uid>`` as far as it goes."""
        parts = zip(("studies", "series", "instances"), (self.study, self.series, self.instance))
        return "".join(f"/{name}/{uid}" for name, uid in parts if uid)

    @property
    def uri(self) -> str:
        return self.root + self.path

    def below(self, **uids: str) -> PacsAddress:
        return dataclasses.replace(self, **uids)


@dataclasses.dataclass(frozen=True)
class PacsOptions:
    """How a run searches a PACS and talks to it. ``study_dates``: (first, last) as YYYYMMDD, None for any date;
    ``modalities``: a study is listed when it holds one of them. The credentials travel with the options to the
    scoring workers, as the pseudonym key does (never through the command line or Ray's runtime environment)."""

    credentials: Credentials = Credentials()
    max_connections: int = MAX_CONNECTIONS
    requests_per_second: float | None = None
    ca_bundle: str | None = None
    study_dates: tuple[str, str] | None = None
    modalities: tuple[str, ...] = ("MR",)
    page_size: int = dataclasses.field(default_factory=lambda: int(os.environ.get(PAGE_SIZE_VARIABLE, "500")))
    retries: int = 4

    def __post_init__(self):
        if self.max_connections < 1 or self.page_size < 1 or self.retries < 0:
            raise ValueError("max_connections and page_size are at least 1, retries at least 0")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be positive, got {self.requests_per_second}")

    def settings(self, server: str, retries: int | None = None, connect_timeout: float = 10.0) -> ClientSettings:
        return ClientSettings(server, max_concurrent_requests=self.max_connections,
                              retries=self.retries if retries is None else retries, verify=self.ca_bundle or True,
                              connect_timeout_seconds=connect_timeout)


class Pace:
    """At most ``rate`` requests a second from this process, spaced evenly (no limit when None)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        time.sleep(max(0.0, slot - now))


@dataclasses.dataclass(frozen=True)
class SeriesAttributes:
    """A series' search attributes with its study's, as a dataset (``dataset``), and the keywords of the study and
    series modules the server answered (``known``): what the selection rules may judge every instance of it by."""

    dataset: pydicom.Dataset
    known: frozenset[str]


class Pacs:
    """One DICOMweb server as this process talks to it (``pacs_for``): bounded, paced, retried requests."""

    def __init__(self, server: str, options: PacsOptions, retries: int | None = None,
                 connect_timeout: float = 10.0):
        self.settings = options.settings(server, retries, connect_timeout)
        self.options, self.host = options, urllib.parse.urlsplit(server).netloc
        self.session = dicomweb_session(self.settings, options.credentials)
        self.pace = Pace(options.requests_per_second)
        self.series: OrderedDict[tuple[str, str], SeriesAttributes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, params: Mapping | None = None, accept: str = JSON, what: str | None = None,
            encoding: str = "gzip, deflate") -> requests.Response:
        """GET ``path`` below the root, streamed, accepting ``encoding``; StorageError naming ``what`` (None: a
        search) when it fails."""
        self.pace.wait()
        timeout = (self.settings.connect_timeout_seconds, self.settings.read_timeout_seconds)
        try:
            response = self.session.get(self.settings.url + path, params=params, timeout=timeout, stream=True,
                                        headers={"Accept": accept, "Accept-Encoding": encoding})
        except AccessRefusedError as error:  # the session's own sentence for a 401 or 403
            raise PacsRefusedError(str(error)) from None
        except requests.RequestException as error:
            failed = f"the DICOMweb server at {self.host} did not answer ({failure_kind(error)})"
            raise storage.StorageError(f"cannot read {what}: {failed}" if what else failed) from None
        if response.status_code >= 400:
            response.close()
            raise answer_error(response, what)
        return response

    def search(self, path: str, params: Mapping | None = None, what: str | None = None) -> Iterator[dict]:
        """A QIDO-RS search's results (DICOM JSON), a page of ``page_size`` at a time until an empty page; a failure
        names ``what`` it searched for, when given."""
        limit, offset, first = self.options.page_size, 0, None
        while True:
            with self.get(path, {**(params or {}), "limit": limit, "offset": offset}, what=what) as response:
                page = search_page(response)
            if not page or page[0] == first:  # the end; or a server that ignores offset, whose pages repeat
                return
            yield from page
            if len(page) > limit:  # a server that ignores limit answered everything at once
                return
            first, offset = page[0], offset + len(page)

    def retrieve(self, address: PacsAddress, max_bytes: int | None) -> bytes:
        """An instance's bytes as the archive stores them (WADO-RS, any transfer syntax), uncompressed in transit:
        Orthanc gzips what a client accepts gzipped, which made each sample slice cost 17 ms instead of 1.7."""
        with self.get(address.path, accept=INSTANCE, what=address.uri, encoding="identity") as response:
            declared = response.headers.get("Content-Length")
            if max_bytes is not None and declared and int(declared) > max_bytes + 4096:
                raise storage.FileTooLargeError(f"{address.uri} is {declared} bytes, over the limit of {max_bytes}")
            body = read_capped(response, None if max_bytes is None else max_bytes + 4096, address.uri)
            data = first_part(body, response.headers.get("Content-Type", ""), address.uri)
        if max_bytes is not None and len(data) > max_bytes:
            raise storage.FileTooLargeError(f"{address.uri} is {len(data)} bytes, over the limit of {max_bytes}")
        return data

    def series_attributes(self, address: PacsAddress, keywords: tuple[str, ...]) -> SeriesAttributes:
        """The search attributes of the instance's study and series (two searches a series, kept for the next
        instances of it); ``keywords``: what the selection rules read, asked for where the server may omit it."""
        key = (address.study, address.series)
        with self.lock:
            if key in self.series:
                self.series.move_to_end(key)
                return self.series[key]
        found = {}
        for path, uid, level in (("/studies", {"StudyInstanceUID": address.study}, STUDY_KEYWORDS),
                                 (f"/studies/{address.study}/series", {"SeriesInstanceUID": address.series},
                                  SERIES_KEYWORDS)):
            fields = sorted(set(keywords) & level)
            query = {**uid, **({"includefield": ",".join(fields)} if fields else {})}
            answer = next(self.search(path, query, what=address.uri), None)
            if answer is None:
                raise InstanceGoneError(f"{address.uri} is not on the DICOMweb server at {self.host}: its "
                                        f"{'study' if level is STUDY_KEYWORDS else 'series'} is not found (deleted "
                                        f"since the search?)")
            found.update({tag: value for tag, value in answer.items() if keyword_of(tag) in level})
        dataset = pydicom.Dataset.from_json(found)
        attributes = SeriesAttributes(dataset, frozenset(element.keyword for element in dataset))
        with self.lock:
            self.series[key] = attributes
            while len(self.series) > SERIES_CACHED:
                self.series.popitem(last=False)
        return attributes

    def instance_number(self, address: PacsAddress) -> int | None:
        """The instance's InstanceNumber from a search (for the row of an instance skipped unretrieved)."""
        found = next(self.search(f"/studies/{address.study}/series/{address.series}/instances",
                                 {"SOPInstanceUID": address.instance}, what=address.uri), None)
        value = (found or {}).get("00200013", {}).get("Value") or [None]
        try:
            return int(value[0])
        except (TypeError, ValueError):
            return None


@functools.lru_cache(maxsize=8)
def pacs_for(server: str, options: PacsOptions) -> Pacs:
    """This process's ``Pacs`` for a server: one session, so its bound and pace hold for the whole process."""
    return connect(server, options)


def connect(server: str, options: PacsOptions, **settings) -> Pacs:
    """A new ``Pacs``; StorageError for settings that cannot work (a URL holding credentials, say)."""
    try:
        return Pacs(server, options, **settings)
    except DicomwebConfigError as error:
        raise storage.StorageError(str(error)) from None


def keyword_of(tag: str) -> str:
    try:
        return pydicom.datadict.keyword_for_tag(int(tag, 16))
    except ValueError:
        return ""


def failure_kind(error: requests.RequestException) -> str:
    """What went wrong with a request, in a few words (never the URL, which the message names already)."""
    if isinstance(error, requests.exceptions.SSLError):
        return "its TLS certificate could not be verified: give its CA with --dicomweb-ca-bundle"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "no connection"
    return type(error).__name__


def answer_error(response: requests.Response, what: str | None) -> storage.StorageError:
    """The error of an HTTP error answer to a request for ``what`` (None: a search), naming its status but never its
    body."""
    status = f"HTTP {response.status_code} {response.reason or ''}".strip()
    host = urllib.parse.urlsplit(response.url).netloc
    if what is None:
        return storage.StorageError(f"the DICOMweb server at {host} answered a search with {status}")
    if response.status_code in (404, 410):
        return InstanceGoneError(f"{what} is not on the DICOMweb server at {host} ({status}): deleted since the "
                                 f"search?")
    return storage.StorageError(f"cannot read {what}: the DICOMweb server at {host} answered {status}")


def search_page(response: requests.Response) -> list[dict]:
    if response.status_code == 204 or not response.content:
        return []
    try:
        page = response.json()
    except ValueError:
        raise storage.StorageError(f"the DICOMweb server at {urllib.parse.urlsplit(response.url).netloc} answered a "
                                   f"search with something other than DICOM JSON") from None
    return [page] if isinstance(page, dict) else list(page)


def read_capped(response: requests.Response, limit: int | None, uri: str) -> bytes:
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise storage.FileTooLargeError(f"{uri} is over {limit - 4096} bytes, the limit")
    except requests.RequestException as error:
        raise storage.StorageError(f"cannot read {uri}: the answer broke off ({failure_kind(error)})") from None
    return b"".join(chunks)


def first_part(body: bytes, content_type: str, uri: str) -> bytes:
    """The first part of a ``multipart/related`` answer (the body itself when it is not multipart)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/") or not match:
        return body
    delimiter = b"--" + match.group(1).encode("latin-1")
    start = body.find(delimiter)
    headers_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    end = body.find(b"\r\n" + delimiter, headers_end) if headers_end >= 0 else -1
    if end < 0:
        raise storage.StorageError(f"cannot read {uri}: the DICOMweb server answered no instance in its multipart "
                                   f"answer")
    return body[headers_end + 4:end]


def estimated_size(instance: Mapping) -> int:
    """An instance's pixel data size from its search attributes, 0 when they do not tell."""
    def number(tag: str, default: int | None = None) -> int | None:
        value = (instance.get(tag) or {}).get("Value") or [default]
        try:
            return int(value[0])
        except (TypeError, ValueError):
            return default
    rows, columns, bits, frames = number("00280010"), number("00280011"), number("00280100", 16), number("00280008", 1)
    return rows * columns * -(-bits // 8) * frames if rows and columns and bits and frames else 0


def uid_of(answer: Mapping, tag: str) -> str | None:
    value = (answer.get(tag) or {}).get("Value") or [None]
    return str(value[0]) if value[0] and re.fullmatch(UID, str(value[0])) else None


LISTED_MODIFIED = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)  # an instance's, as listed


def iter_instances(location: str, options: PacsOptions) -> Iterator[tuple[str, int]]:
    """(instance URI, estimated size) of every instance at ``location``: a root searched by the options' study
    dates and modalities, or the study, series or instance it names. The searches of ``SEARCHED_AT_ONCE`` studies'
    series, then of as many series' instances, run at once on ``max_connections`` threads (each waits on the
    network, not the CPU); what they find comes in order, a series at a time."""
    address = PacsAddress.parse(location)
    pacs = pacs_for(address.server, options)
    counts = {"studies": 0, "series": 0, "instances": 0}
    with concurrent.futures.ThreadPoolExecutor(options.max_connections, thread_name_prefix="pacs-search") as pool:
        studies = [address] if address.study else studies_of(pacs, address, options)
        series = fanned_out(pool, functools.partial(series_in, pacs), counted(studies, counts, "studies"))
        for found in fanned_out(pool, functools.partial(instances_in, pacs), counted(series, counts, "series")):
            counts["instances"] += 1
            yield found
    logger.info("%s: %d studies, %d series, %d instances found", address.root, *counts.values())


SEARCHED_AT_ONCE = 32  # studies, or series, whose searches one round runs at once


def fanned_out(pool: concurrent.futures.Executor, search, items: Iterator) -> Iterator:
    """What ``search(item)`` (a list) finds for each item, in order, ``SEARCHED_AT_ONCE`` items searched at once."""
    while chunk := list(itertools.islice(items, SEARCHED_AT_ONCE)):
        for found in pool.map(search, chunk):
            yield from found


def counted(items, counts: dict, name: str) -> Iterator:
    for item in items:
        counts[name] += 1
        yield item


def series_in(pacs: Pacs, study: PacsAddress) -> list[PacsAddress]:
    """The series of a study (or the one series, or instance, an address names)."""
    if study.series:
        return [study]
    return [study.below(series=uid) for answer in pacs.search(f"{study.path}/series")
            if (uid := uid_of(answer, "0020000E"))]


def instances_in(pacs: Pacs, series: PacsAddress) -> list[tuple[str, int]]:
    """(URI, estimated size) of a series' instances (or of the one instance its address names)."""
    query = {"SOPInstanceUID": series.instance} if series.instance else {}
    return [(series.below(instance=uid).uri, estimated_size(answer))
            for answer in pacs.search(f"{series.below(instance=None).path}/instances", query)
            if (uid := uid_of(answer, "00080018"))]


def studies_of(pacs: Pacs, root: PacsAddress, options: PacsOptions) -> Iterator[PacsAddress]:
    """The studies of the options' dates that hold one of their modalities. The modalities are matched here, on the
    ModalitiesInStudy each answer carries, not sent to the server: Orthanc 1.10 pages a ModalitiesInStudy search
    wrongly (two to a page, it lost half of the sample studies). A study whose answer does not say is listed; the
    selection rules judge its series."""
    dates = {"StudyDate": "-".join(dict.fromkeys(options.study_dates))} if options.study_dates else {}
    wanted = set(options.modalities)
    for answer in pacs.search("/studies", dates):
        uid = uid_of(answer, "0020000D")
        held = {str(value).strip().upper() for value in (answer.get("00080061") or {}).get("Value") or []}
        if uid and (not wanted or not held or held & wanted):
            yield root.below(study=uid)


def find_instance(root: str, sop_instance_uid: str, options: PacsOptions) -> str | None:
    """The address of the instance with this SOP Instance UID on the PACS at ``root`` (a search of its instances),
    or None when it has none."""
    address = PacsAddress.parse(root)
    answer = next(pacs_for(address.server, options).search("/instances", {"SOPInstanceUID": sop_instance_uid}), None)
    study, series = (uid_of(answer, tag) for tag in ("0020000D", "0020000E")) if answer else (None, None)
    return PacsAddress(address.root, study, series, sop_instance_uid).uri if study and series else None


def check_pacs(location: str, options: PacsOptions) -> None:
    """One quick search with a short connect timeout and one retry: an unreachable server, or credentials it refuses,
    raise StorageError naming it within seconds."""
    pacs = connect(PacsAddress.parse(location).server, options, retries=1, connect_timeout=PROBE_TIMEOUT_S)
    with pacs.get("/studies", {"limit": 1}):
        pass

