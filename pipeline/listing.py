"""Listing stage: what to score. Folders and S3 prefixes are walked recursively (any file name, DICOMDIR
skipped, symbolic links to folders not followed, so link loops cannot trap the walk); single files are taken as
they are. A manifest is a text file with one path or ``s3://`` URI a line (``#`` for comments): a line naming a
local folder, or ending in ``/``, is walked like an ``--input`` folder; any other line is a file, taken as it is
(a missing one becomes an ``unreadable_file`` row naming it, not a refused run).

Each file is listed with its size and modification time (from the same listing on S3, a ``stat`` on disk): an
incremental run compares them with what the results tables hold to find new and changed files.

The listing streams: folders are walked one folder at a time (an S3 prefix one delimiter listing a level), and a run
writes what it finds to Parquet (``stage_listing``) as it goes, so the driver never holds an archive's list; the
comparison with the results tables is a query over those files (``pipeline.screen.select_files``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import itertools
import os
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from infra import storage
from model.decode import DICOM_EXTENSIONS
from pipeline import schema as col
from pipeline.results import ParquetParts, staged_batches

SKIPPED_NAMES = frozenset({"dicomdir"})
UNKNOWN = -1  # a size or modification time the listing could not tell, as the listing's Parquet holds it
# the listing as a run stages it: the URI, the size in bytes and the modification time in microseconds since the
# epoch (exact, so that equality with what was scored is exact), -1 where unknown
LISTING_SCHEMA = pa.schema([pa.field(col.SOURCE_URI, pa.string()), pa.field(col.SOURCE_SIZE, pa.int64()),
                            pa.field(col.SOURCE_MODIFIED, pa.int64())])
LISTING_BATCH = 20_000  # files a listing batch holds before it is written
MANIFEST_LOOKUPS = 32  # a manifest's S3 files looked up at once (size and modification time, one request each)
MANIFEST_CHUNK = 2_048  # a manifest's S3 lines looked up as one chunk


@dataclasses.dataclass(frozen=True, order=True)
class ListedFile:
    """A file to score: its URI, and its size and modification time when the listing could tell."""

    uri: str
    size: int | None = None
    modified: datetime.datetime | None = None


def micros(moment: datetime.datetime | None) -> int:
    """Microseconds since the epoch, exactly (-1 for unknown): how modification times are compared."""
    return UNKNOWN if moment is None else (moment - col.EPOCH) // datetime.timedelta(microseconds=1)


def listed(uri: str, info: pafs.FileInfo | None) -> ListedFile:
    if info is None or info.type != pafs.FileType.File:
        return ListedFile(uri)
    modified = info.mtime.astimezone(datetime.timezone.utc) if info.mtime else None
    return ListedFile(uri, int(info.size) if info.size is not None else None, modified)


def is_skipped(uri: str) -> bool:
    return uri.rstrip("/").rsplit("/", 1)[-1].lower() in SKIPPED_NAMES


def may_be_dicom(uri: str) -> bool:
    """Whether a file's name allows DICOM: a DICOM extension, or none (PACS exports often name files by UID)."""
    name = uri.rsplit("/", 1)[-1].lower()
    return name.endswith(DICOM_EXTENSIONS) or "." not in name


def local_file(path: str) -> ListedFile:
    try:
        stat = os.stat(path)
    except OSError:
        return ListedFile(path)  # unreadable: decoding turns it into an error row naming it
    return ListedFile(path, stat.st_size, datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc))


def walk_local(folder: str) -> Iterator[ListedFile]:
    for directory, _, names in os.walk(folder, followlinks=False, onerror=None):
        for name in names:
            yield local_file(os.path.join(directory, name))


def walk_s3(prefix: str) -> Iterator[ListedFile]:
    """The files under an S3 prefix, one level (one delimiter listing) at a time, depth first: memory holds one
    level's entries, not the prefix's."""
    pending = [prefix]
    while pending:
        level = pending.pop()
        entries = storage.list_entries(level, recursive=False)
        for entry in entries:
            if entry.type == pafs.FileType.File:
                yield listed(storage.to_uri(prefix, entry.path), entry)
        pending.extend(sorted((storage.to_uri(prefix, entry.path) for entry in entries
                               if entry.type == pafs.FileType.Directory), reverse=True))


def iter_location(location: str) -> Iterator[ListedFile]:
    """Files under a folder/prefix, or the location itself when it is a file; StorageError when unreachable (raised
    before the first file)."""
    if storage.is_s3(location):
        info = storage.file_info(location)
        if info.is_file:
            yield listed(location, info)
            return
        files = walk_s3(location)
        first = next(files, None)
        if first is None:
            if not storage.is_dir(location):
                raise storage.StorageError(f"input {location} does not exist")
            return
        yield first
        yield from files
        return
    if os.path.isfile(location):
        yield local_file(location)
        return
    if not os.path.isdir(location):
        raise storage.StorageError(f"input {location} does not exist or cannot be read")
    yield from walk_local(location)


def iter_manifest(manifest: str, lookups: int = MANIFEST_LOOKUPS) -> Iterator[ListedFile]:
    """The files a manifest names, in its order, its folders walked. An S3 file's size and modification time take a
    request each, which waits on the network rather than the CPU, so up to ``lookups`` run at once, a chunk of
    ``MANIFEST_CHUNK`` lines at a time (a long manifest's answers are not all held at once)."""
    entries = (line.strip() for line in storage.read_text(manifest).splitlines())
    with concurrent.futures.ThreadPoolExecutor(max(1, lookups), thread_name_prefix="manifest-lookup") as pool:
        pending: list[str] = []
        for entry in entries:
            if not entry or entry.startswith("#"):
                continue
            if storage.is_s3(entry) and not entry.endswith("/"):
                pending.append(entry)
                if len(pending) == MANIFEST_CHUNK:
                    yield from pool.map(s3_named_file, pending)
                    pending = []
            else:
                yield from pool.map(s3_named_file, pending)
                pending = []
                yield from manifest_entry(entry)
        yield from pool.map(s3_named_file, pending)


def s3_named_file(uri: str) -> ListedFile:
    """An S3 file a manifest names, with its size and modification time when S3 tells them (a missing or
    unreachable one is listed as it is: decoding turns it into an error row that names it)."""
    try:
        return listed(uri, storage.file_info(uri))
    except storage.StorageError:
        return ListedFile(uri)


def manifest_entry(entry: str) -> Iterator[ListedFile]:
    """A manifest line that is not an S3 file: a folder or prefix (walked) or a local file."""
    if entry.endswith("/") or (not storage.is_s3(entry) and os.path.isdir(entry)):
        yield from iter_location(entry)
    else:
        yield local_file(entry)


def iter_input_files(locations: Iterable[str], manifests: Iterable[str] = ()) -> Iterator[ListedFile]:
    """Every file under ``locations`` and named by ``manifests``, as found: unordered, and a file named twice comes
    twice (``stage_listing`` and ``list_input_files`` keep one)."""
    for location in locations:
        for file in iter_location(location):
            if not is_skipped(file.uri):
                yield file
    for manifest in manifests:
        for file in iter_manifest(manifest):
            if not is_skipped(file.uri):
                yield file


def list_input_files(locations: list[str], manifests: list[str] = ()) -> list[ListedFile]:
    """Every file to score, each once, sorted by URI: the whole list, for small inputs (a run stages its listing
    with ``stage_listing`` instead)."""
    unique = {file.uri: file for file in iter_input_files(locations, manifests)}
    return [unique[uri] for uri in sorted(unique)]


def list_inputs(locations: list[str], manifests: list[str] = ()) -> list[str]:
    """The URIs of ``list_input_files``."""
    return [file.uri for file in list_input_files(locations, manifests)]


def listing_batch(files: list[ListedFile]) -> pa.Table:
    return pa.table({col.SOURCE_URI: [file.uri for file in files],
                     col.SOURCE_SIZE: [UNKNOWN if file.size is None else file.size for file in files],
                     col.SOURCE_MODIFIED: [micros(file.modified) for file in files]}, schema=LISTING_SCHEMA)


@dataclasses.dataclass(frozen=True)
class Listing:
    """A run's listing, staged as Parquet files in ``folder`` (local to the driver): ``entries`` files found (a
    file named twice counts twice; the selection keeps one), and whether any of them may be DICOM."""

    folder: str
    entries: int
    may_hold_dicom: bool

    def batches(self) -> pa.RecordBatchReader:
        """The listing as a stream read once, a row group at a time (``results.staged_batches``)."""
        return staged_batches(self.folder, LISTING_SCHEMA)


def stage_listing(locations: Iterable[str], manifests: Iterable[str], folder: str,
                  batch_files: int = LISTING_BATCH) -> Listing:
    """Walk the inputs and write what is found to Parquet under ``folder`` a batch at a time: the driver holds at
    most ``batch_files`` listed files, however large the archive."""
    parts = ParquetParts(folder, LISTING_SCHEMA, rows_per_group=batch_files)
    entries, dicom = 0, False
    found = iter_input_files(locations, manifests)
    while batch := list(itertools.islice(found, batch_files)):
        entries += len(batch)
        dicom = dicom or any(may_be_dicom(file.uri) for file in batch)
        parts.write(listing_batch(batch))
    parts.close()
    return Listing(folder, entries, dicom)
