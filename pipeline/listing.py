"""Listing stage: what to score. Folders and S3 prefixes are walked recursively (any file name, DICOMDIR
skipped, symbolic links to folders not followed, so link loops cannot trap the walk); single files are taken as
they are. A manifest is a text file with one path or ``s3://`` URI a line (``#`` for comments): a line naming a
local folder, or ending in ``/``, is walked like an ``--input`` folder; any other line is a file, taken as it is
(a missing one becomes an ``unreadable_file`` row naming it, not a refused run).

Each file is listed with its size and modification time (from the same listing on S3, a ``stat`` on disk): an
incremental run compares them with what the results tables hold to find new and changed files.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import pyarrow.fs as pafs

from infra import storage

SKIPPED_NAMES = frozenset({"dicomdir"})


@dataclasses.dataclass(frozen=True, order=True)
class ListedFile:
    """A file to score: its URI, and its size and modification time when the listing could tell."""

    uri: str
    size: int | None = None
    modified: datetime.datetime | None = None


def listed(uri: str, info: pafs.FileInfo | None) -> ListedFile:
    if info is None or info.type != pafs.FileType.File:
        return ListedFile(uri)
    modified = info.mtime.astimezone(datetime.timezone.utc) if info.mtime else None
    return ListedFile(uri, int(info.size) if info.size is not None else None, modified)


def is_skipped(uri: str) -> bool:
    return uri.rstrip("/").rsplit("/", 1)[-1].lower() in SKIPPED_NAMES


def local_file(path: str) -> ListedFile:
    try:
        stat = os.stat(path)
    except OSError:
        return ListedFile(path)  # unreadable: decoding turns it into an error row naming it
    return ListedFile(path, stat.st_size, datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc))


def walk_local(folder: str) -> list[ListedFile]:
    found = []
    for directory, _, names in os.walk(folder, followlinks=False, onerror=None):
        found.extend(local_file(os.path.join(directory, name)) for name in names)
    return found


def list_location(location: str) -> list[ListedFile]:
    """Files under a folder/prefix, or the location itself when it is a file; StorageError when unreachable."""
    if storage.is_s3(location):
        info = storage.file_info(location)
        if info.is_file:
            return [listed(location, info)]
        files = [listed(storage.to_uri(location, entry.path), entry)
                 for entry in storage.list_entries(location, recursive=True) if entry.type == pafs.FileType.File]
        if not files and not storage.is_dir(location):
            raise storage.StorageError(f"input {location} does not exist")
        return files
    if os.path.isfile(location):
        return [local_file(location)]
    if not os.path.isdir(location):
        raise storage.StorageError(f"input {location} does not exist or cannot be read")
    return walk_local(location)


def read_manifest(manifest: str) -> list[ListedFile]:
    """The files a manifest names, its folders walked."""
    lines = storage.read_text(manifest).splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [found for entry in entries for found in manifest_entry(entry)]


def manifest_entry(entry: str) -> list[ListedFile]:
    is_folder = entry.endswith("/") or (not storage.is_s3(entry) and os.path.isdir(entry))
    if is_folder:
        return list_location(entry)
    if storage.is_s3(entry):
        try:
            return [listed(entry, storage.file_info(entry))]
        except storage.StorageError:
            return [ListedFile(entry)]
    return [local_file(entry)]


def list_input_files(locations: list[str], manifests: list[str] = ()) -> list[ListedFile]:
    """Every file to score, each once, in a stable order, with its size and modification time."""
    found = [file for location in locations for file in list_location(location)]
    found.extend(file for manifest in manifests for file in read_manifest(manifest))
    unique = {file.uri: file for file in found if not is_skipped(file.uri)}
    return [unique[uri] for uri in sorted(unique)]


def list_inputs(locations: list[str], manifests: list[str] = ()) -> list[str]:
    """The URIs of ``list_input_files``."""
    return [file.uri for file in list_input_files(locations, manifests)]
