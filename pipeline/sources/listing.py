"""Listing stage: what to score. Folders and S3 prefixes are walked recursively (any file name, DICOMDIR
skipped, symbolic links to folders not followed, so link loops cannot trap the walk); single files are taken as
they are. A manifest is a text file with one path or ``s3://`` URI a line (``#`` for comments): a line naming a
local folder, or ending in ``/``, is walked like an ``--input`` folder; any other line is a file, taken as it is
(a missing one becomes an ``unreadable_file`` row naming it, not a refused run).

Every local path is listed in one spelling (``local_path``): absolute and normalised, so ``a.jpg``,
``./a.jpg`` and ``../M/a.jpg`` seen from ``M`` are one file, listed and scored once. A relative ``--input`` is
taken from the working folder; a relative manifest line from the manifest's own folder (``manifest_location``),
so a manifest means the same files whatever folder the job runs in. Links are not resolved.

A local folder is walked without recursion (a tree thousands of folders deep is listed like any other). A folder
that cannot be listed (no permission, removed during the walk) is listed itself, with a warning: reading it gives
its ``unreadable_file`` row, which says why, so none of its files vanish unseen. What is not a regular file (a FIFO,
a socket, a device) is listed too, and the reader refuses to open it (``infra.storage.read_bytes``): it becomes an
error row naming what it is.

Each file is listed with its size and modification time (from the same listing on S3, a ``stat`` on disk): an
incremental run compares them with what the results tables hold to find new and changed files.

A PACS input (``dicomweb+https://host/dicom-web``) is searched with QIDO-RS, study by study (``pipeline.sources.pacs``):
each instance is listed with its address, a size its search attributes give and a fixed modification time, so an
instance scored before is unchanged.

The listing streams: folders are walked one folder at a time (an S3 prefix one delimiter listing a level), and a run
writes what it finds to Parquet (``stage_listing``) as it goes, so the driver never holds an archive's list; the
comparison with the results tables is a query over those files (``pipeline.screening.choice.select_files``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import itertools
import logging
import os
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from infra import storage
from model.decode import DICOM_EXTENSIONS
from pipeline import schema as col
from pipeline.results.tables import ParquetParts, staged_batches
from pipeline.sources.pacs import (LISTED_MODIFIED, PacsAddress, PacsOptions, check_pacs, is_dicomweb,
                                   iter_instances, pacs_for)

logger = logging.getLogger(__name__)

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
    """Whether a file's name allows DICOM: a DICOM extension, or none (PACS exports often name files by UID); an
    instance from a PACS always is."""
    name = uri.rsplit("/", 1)[-1].lower()
    return name.endswith(DICOM_EXTENSIONS) or "." not in name or is_dicomweb(uri)


def local_file(path: str) -> ListedFile:
    try:
        stat = os.stat(path)
    except OSError:
        return ListedFile(path)  # unreadable: decoding turns it into an error row naming it
    return ListedFile(path, stat.st_size, datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc))


def local_path(path: str, base: str | None = None) -> str:
    """The one spelling of a local path: absolute (a relative path is taken from ``base``, else from the working
    folder) and normalised lexically (``.``, ``..`` and doubled separators gone); links are not resolved."""
    return os.path.normpath(os.path.join(base, path) if base else os.path.abspath(path))


def walk_local(folder: str) -> Iterator[ListedFile]:
    """The files under a local folder, a folder at a time, depth first, from a list of folders still to walk
    rather than by recursion, so no depth exhausts Python's stack. Links to folders are not followed; a folder
    that cannot be listed is listed itself (see the module docstring)."""
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except OSError as error:
            logger.warning("folder %s cannot be listed (%s): it becomes an error row", directory,
                           error.strerror or error)
            yield ListedFile(directory)
            continue
        folders = []
        for entry in entries:
            if is_folder(entry):
                if not entry.is_symlink():
                    folders.append(entry.path)
            else:
                yield local_file(entry.path)
        pending.extend(sorted(folders, reverse=True))  # the first name is walked first


def is_folder(entry: os.DirEntry) -> bool:
    """Whether an entry is a folder (or a link to one), as ``os.walk`` decides: an entry that cannot be examined is
    taken for a file, so the reader names its error."""
    try:
        return entry.is_dir()
    except OSError:
        return False


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


def iter_location(location: str, pacs: PacsOptions | None = None) -> Iterator[ListedFile]:
    """Files under a folder/prefix, or the location itself when it is a file, or the instances a PACS's searches
    find (``pacs``: how it is searched); StorageError when unreachable (raised before the first file)."""
    if is_dicomweb(location):
        for uri, size in iter_instances(location, pacs or PacsOptions()):
            yield ListedFile(uri, size, LISTED_MODIFIED)
        return
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
    location = local_path(location)
    if os.path.isfile(location):
        yield local_file(location)
        return
    if not os.path.isdir(location):
        raise storage.StorageError(f"input {location} does not exist or cannot be read")
    yield from walk_local(location)


def check_reachable(location: str, pacs: PacsOptions | None = None) -> None:
    """StorageError naming ``location`` within seconds when it is on an S3 endpoint or a PACS that does not answer
    (or refuses the credentials); nothing for a local path."""
    if is_dicomweb(location):
        check_pacs(location, pacs or PacsOptions())
    else:
        storage.check_reachable(location)


def read_listed(uri: str, max_bytes: int | None = None, pacs: PacsOptions | None = None) -> bytes:
    """A listed file's bytes, read again: from disk or S3 (``infra.storage.read_bytes``), or a PACS instance retrieved
    (reaching the PACS as ``pacs`` says), each bounded in time; StorageError naming it when it cannot be read."""
    if not is_dicomweb(uri):
        return storage.read_bytes(uri, max_bytes=max_bytes)
    address = PacsAddress.of_instance(uri)
    return storage.within(storage.READ_TIMEOUT, f"retrieving {uri}", pacs_for(address.server, pacs or PacsOptions())
                          .retrieve, address, max_bytes)


def iter_manifest(manifest: str, lookups: int = MANIFEST_LOOKUPS) -> Iterator[ListedFile]:
    """The files a manifest names, in its order, its folders walked. An S3 file's size and modification time take a
    request each, which waits on the network rather than the CPU, so up to ``lookups`` run at once, a chunk of
    ``MANIFEST_CHUNK`` lines at a time (a long manifest's answers are not all held at once). Relative lines are
    resolved against the manifest's folder (``manifest_location``)."""
    entries = (manifest_location(line.strip(), manifest) for line in storage.read_text(manifest).splitlines())
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


def manifest_location(entry: str, manifest: str) -> str:
    """A manifest line as a location: an ``s3://`` URI as written; a local path in its one spelling
    (``local_path``), a relative one taken from the manifest's folder; in a manifest on S3, a relative line is a key
    beside the manifest (S3 keys are not paths: nothing in them is normalised). A trailing ``/`` is kept (it asks for
    a walk); blank and comment lines are returned as they are."""
    if not entry or entry.startswith("#") or storage.is_s3(entry):
        return entry
    if storage.is_s3(manifest) and not os.path.isabs(entry):
        return f"{manifest.rsplit('/', 1)[0]}/{entry}"
    base = None if storage.is_s3(manifest) else os.path.dirname(local_path(manifest))
    return local_path(entry, base) + ("/" if entry.endswith("/") else "")


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
        yield local_file(local_path(entry))


def iter_input_files(locations: Iterable[str], manifests: Iterable[str] = (),
                     pacs: PacsOptions | None = None) -> Iterator[ListedFile]:
    """Every file under ``locations`` and named by ``manifests``, as found: unordered, and a file named twice comes
    twice (``stage_listing`` and ``list_input_files`` keep one)."""
    for location in locations:
        for file in iter_location(location, pacs):
            if not is_skipped(file.uri):
                yield file
    for manifest in manifests:
        for file in iter_manifest(manifest):
            if not is_skipped(file.uri):
                yield file


def list_input_files(locations: list[str], manifests: list[str] = (),
                     pacs: PacsOptions | None = None) -> list[ListedFile]:
    """Every file to score, each once, sorted by URI: the whole list, for small inputs (a run stages its listing
    with ``stage_listing`` instead)."""
    unique = {file.uri: file for file in iter_input_files(locations, manifests, pacs)}
    return [unique[uri] for uri in sorted(unique)]


def list_inputs(locations: list[str], manifests: list[str] = ()) -> list[str]:
    """The URIs of ``list_input_files``."""
    return [file.uri for file in list_input_files(locations, manifests)]


def refuse_output_inside_inputs(output: str, inputs: Iterable[str]) -> None:
    """StorageError when the output is an input folder or prefix, or lies inside one: every night would then list
    its own tables, work files and reports among the images it screens. Local paths are compared with links
    resolved; manifest lines are not looked at (the manifest is not read before the listing)."""
    for location in inputs:
        if inside(output, location):
            raise storage.StorageError(
                f"the output {output} is inside the input {location}: every night would screen its own tables and "
                f"reports; choose an output folder outside every input")


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both local, or both on S3)."""
    if storage.is_s3(path) != storage.is_s3(folder) or is_dicomweb(path) or is_dicomweb(folder):
        return False
    if storage.is_s3(path):
        return f"{path.rstrip('/')}/".startswith(f"{folder.rstrip('/')}/")
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


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
                  batch_files: int = LISTING_BATCH, pacs: PacsOptions | None = None) -> Listing:
    """Walk the inputs and write what is found to Parquet under ``folder`` a batch at a time: the driver holds at
    most ``batch_files`` listed files, however large the archive."""
    parts = ParquetParts(folder, LISTING_SCHEMA, rows_per_group=batch_files)
    entries, dicom = 0, False
    found = iter_input_files(locations, manifests, pacs)
    while batch := list(itertools.islice(found, batch_files)):
        entries += len(batch)
        dicom = dicom or any(may_be_dicom(file.uri) for file in batch)
        parts.write(listing_batch(batch))
    parts.close()
    return Listing(folder, entries, dicom)
