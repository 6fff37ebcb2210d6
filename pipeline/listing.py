"""Listing stage: what to score. Folders and S3 prefixes are walked recursively (any file name, DICOMDIR
skipped, symbolic links to folders not followed, so link loops cannot trap the walk); single files are taken as
they are. A manifest is a text file with one path or ``s3://`` URI a line (``#`` for comments): a line naming a
local folder, or ending in ``/``, is walked like an ``--input`` folder; any other line is a file, taken as it is
(a missing one becomes an ``unreadable_file`` row naming it, not a refused run).
"""

from __future__ import annotations

import os

from infra import storage

SKIPPED_NAMES = frozenset({"dicomdir"})


def is_skipped(uri: str) -> bool:
    return uri.rstrip("/").rsplit("/", 1)[-1].lower() in SKIPPED_NAMES


def walk_local(folder: str) -> list[str]:
    found = []
    for directory, _, names in os.walk(folder, followlinks=False, onerror=None):
        found.extend(os.path.join(directory, name) for name in names)
    return found


def list_location(location: str) -> list[str]:
    """Files under a folder/prefix, or the location itself when it is a file; StorageError when unreachable."""
    if storage.is_s3(location):
        info = storage.file_info(location)
        if info.is_file:
            return [location]
        files = storage.list_files(location)
        if not files and not storage.is_dir(location):
            raise storage.StorageError(f"input {location} does not exist")
        return files
    if os.path.isfile(location):
        return [location]
    if not os.path.isdir(location):
        raise storage.StorageError(f"input {location} does not exist or cannot be read")
    return walk_local(location)


def read_manifest(manifest: str) -> list[str]:
    """The files a manifest names, its folders walked."""
    lines = storage.read_text(manifest).splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [uri for entry in entries for uri in manifest_entry(entry)]


def manifest_entry(entry: str) -> list[str]:
    is_folder = entry.endswith("/") or (not storage.is_s3(entry) and os.path.isdir(entry))
    return list_location(entry) if is_folder else [entry]


def list_inputs(locations: list[str], manifests: list[str] = ()) -> list[str]:
    """Every file to score, each once, in a stable order."""
    found = [uri for location in locations for uri in list_location(location)]
    found.extend(uri for manifest in manifests for uri in read_manifest(manifest))
    return sorted({uri for uri in found if not is_skipped(uri)})
