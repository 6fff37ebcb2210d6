"""Paths that may carry identity: export folders are often named after patients (``SMITH^JOHN_MRN-0001``).

Two keyed transformations, both HMAC-SHA256 under the pseudonym key (``pipeline.pseudonym``), never reversible
without it:

- a file reference (``file_reference``): ``f-`` and 12 hex digits for a stored ``source_uri``. The morning report
  names a file by its reference and its file name, never by its folders; ``python -m jobs.query path`` turns a
  reference back into the stored path for a user who holds the results (and the key).
- pseudonymised directory names (``PathPseudonymizer``, ``jobs.screen --pseudonymize-paths``): every folder name
  below the input folder given to the run becomes ``d-`` and 16 hex digits, the input folder itself and the file
  name stay as they are; a file outside any input folder (a manifest line, a file given as input) has every folder
  name pseudonymised (an S3 bucket stays). The same key and input give the same pseudonyms every night, so
  incremental runs still find unchanged files. ``resolve_pseudonymized`` finds the real path again by listing the
  folders and pseudonymising their names with the key; a PACS instance's address (below its DICOMweb root, all but
  the SOP Instance UID pseudonymised) by searching the PACS for its SOP Instance UID.

A run without a key (JPEG and PNG only) derives its report's references from the run ID instead (``r-``): they
still show no folder, but anyone holding the report can check a guessed path against them.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import re
from typing import Iterable

from infra import storage
from infra.storage import S3_SCHEME
from pipeline.dicomweb.client import DicomwebConfigError, load_credentials
from pipeline.pseudonym import keyed_digest
from pipeline.sources.pacs import PacsOptions, find_instance, is_dicomweb

logger = logging.getLogger(__name__)

REFERENCE = re.compile(r"[fr]-[0-9a-f]{12}")  # f-: keyed; r-: derived from the run ID (a run without a key)
DIRECTORY_PSEUDONYM = re.compile(r"d-[0-9a-f]{16}")


def file_reference(uri: str, key: bytes | None, run_id: str = "") -> str:
    """The report's short name of a stored ``source_uri``, holding no folder name: keyed (``f-``, stable across
    runs), or without a key derived from the run ID (``r-``)."""
    if key is not None:
        return "f-" + keyed_digest(key, "file", uri, 12)
    return "r-" + keyed_digest(run_id.encode(), "file", uri, 12)


def file_name(uri: str) -> str:
    """The last component of a path or URI (no folder)."""
    return posixpath.basename(uri.rstrip("/")) if storage.is_s3(uri) else os.path.basename(uri.rstrip(os.sep))


def directory_pseudonym(name: str, key: bytes) -> str:
    return "d-" + keyed_digest(key, "directory", name, 16)


def split_clear(uri: str, roots: Iterable[str]) -> tuple[str, str]:
    """(the part kept as it is, the rest): the longest input folder ``uri`` lies in, else the S3 bucket or the
    file system's root."""
    inside = [root for root in roots if uri.startswith(root.rstrip("/") + "/")]
    if inside:
        root = max(inside, key=len).rstrip("/")
        return root, uri[len(root) + 1:]
    if storage.is_s3(uri):
        bucket, _, rest = uri[len(S3_SCHEME):].partition("/")
        return S3_SCHEME + bucket, rest
    return "", uri.lstrip("/")


class PathPseudonymizer:
    """``source_uri`` with its folder names below the input folders pseudonymised (module docstring)."""

    def __init__(self, key: bytes, roots: Iterable[str]):
        self.key, self.roots = key, tuple(root for root in roots if root)
        self.pseudonyms: dict[str, str] = {}

    def pseudonym(self, name: str) -> str:
        if name not in self.pseudonyms:
            self.pseudonyms[name] = directory_pseudonym(name, self.key)
        return self.pseudonyms[name]

    def __call__(self, uri: str | None) -> str | None:
        if not uri:
            return uri
        clear, rest = split_clear(uri, self.roots)
        parts = rest.split("/")
        hidden = [self.pseudonym(part) if part else part for part in parts[:-1]] + parts[-1:]
        return "/".join([clear, *hidden])


def resolve_pseudonymized(uri: str, key: bytes, pacs: PacsOptions | None = None) -> str | None:
    """The real path of a stored ``source_uri`` whose folder names were pseudonymised, found by listing each
    folder from the first pseudonym down; None when a folder is gone (or the key is not the run's). A PACS
    instance's address is found by its SOP Instance UID, reaching the PACS as ``pacs`` says (else with the
    ``DICOMWEB_*`` credentials of the environment)."""
    parts = uri.split("/")
    first = next((index for index, part in enumerate(parts) if DIRECTORY_PSEUDONYM.fullmatch(part)), None)
    if first is None:
        return uri
    if is_dicomweb(uri):
        return pacs_instance("/".join(parts[:first]), uri, key, pacs)
    current = "/".join(parts[:first]) or "/"
    for part in parts[first:-1]:
        if DIRECTORY_PSEUDONYM.fullmatch(part):
            current = real_folder(current, part, key)
        else:
            current = storage.join(current, part)
        if current is None:
            return None
    return storage.join(current, parts[-1])


def pacs_instance(clear: str, uri: str, key: bytes, pacs: PacsOptions | None) -> str | None:
    """The address of the PACS instance a pseudonymised ``uri`` names, when the instance its SOP Instance UID finds
    has those pseudonyms under ``key``."""
    try:
        found = find_instance(clear, file_name(uri), pacs or PacsOptions(load_credentials()))
    except (storage.StorageError, DicomwebConfigError) as error:
        logger.warning("a pseudonymised PACS address cannot be resolved: %s", type(error).__name__)
        return None
    return found if found and PathPseudonymizer(key, [clear])(found) == uri else None


@functools.lru_cache(maxsize=4096)
def real_folder(parent: str, pseudonym: str, key: bytes) -> str | None:
    """The sub-folder of ``parent`` whose name has ``pseudonym``; None when there is none."""
    try:
        folders = storage.list_dirs(parent)
    except storage.StorageError as error:
        logger.warning("a pseudonymised path cannot be resolved: %s", type(error).__name__)
        return None
    for folder in folders:
        if directory_pseudonym(file_name(folder), key) == pseudonym:
            return folder
    return None
