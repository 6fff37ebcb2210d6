"""Storage addressed by URI: a local path or ``s3://bucket/key``, through pyarrow filesystems.

S3 credentials come only from the standard AWS chain (environment, shared config, instance role); an S3-compatible
endpoint is taken from ``AWS_ENDPOINT_URL`` when set. Nothing here logs credentials. Every S3 request that fails
transiently (500, 503, throttling, a dropped connection) is retried by the AWS SDK with exponential back-off and
jitter, up to ``S3_MAX_ATTEMPTS`` attempts (``MRI_SCREEN_S3_MAX_ATTEMPTS``); what still fails raises StorageError.
Local files are written to a temporary name and renamed, so a reader never sees half a file. Only regular files
are read: a FIFO, socket, device or folder is refused with a StorageError that says what it is (opening a FIFO would
wait for a writer forever), and every read is bounded in time (``READ_TIMEOUT``, ``MRI_SCREEN_READ_TIMEOUT``), so a
network share that stops answering costs one file, not the night.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
import threading
import uuid

import pyarrow.fs as pafs

S3_SCHEME = "s3://"
S3_MAX_ATTEMPTS = int(os.environ.get("MRI_SCREEN_S3_MAX_ATTEMPTS", "8"))
S3_CONNECT_TIMEOUT = float(os.environ.get("MRI_SCREEN_S3_CONNECT_TIMEOUT", "3"))
PROBE_ATTEMPTS = 2  # reachability is checked with few attempts, so a dead endpoint is reported in seconds
READ_TIMEOUT = float(os.environ.get("MRI_SCREEN_READ_TIMEOUT", "600"))  # seconds one whole-file read may take
# what a path is when it is not a regular file, as a reader names it
SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class StorageError(RuntimeError):
    """A location that cannot be read or written; the message names the location."""


class FileTooLargeError(StorageError):
    """A file larger than the reader's byte limit (not read)."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")


class NoFolderMarkers(pafs.FileSystemHandler):
    """An S3 filesystem whose ``create_dir`` does nothing. S3 has no folders: pyarrow (and Ray's writers through
    it) would otherwise leave a zero-byte marker object for every "folder" created, e.g. ``_work/<run_id>/``."""

    def __init__(self, s3: pafs.S3FileSystem):
        self.s3 = s3

    def __eq__(self, other) -> bool:
        return isinstance(other, NoFolderMarkers) and self.s3.equals(other.s3)

    def __reduce__(self):
        return NoFolderMarkers, (self.s3,)

    def get_type_name(self) -> str:
        return "s3-no-folder-markers"

    def normalize_path(self, path):
        return self.s3.normalize_path(path)

    def get_file_info(self, paths):
        return self.s3.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.s3.get_file_info(selector)

    def create_dir(self, path, recursive):
        pass

    def delete_dir(self, path):
        self.s3.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.s3.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the contents of a whole S3 account")

    def delete_file(self, path):
        self.s3.delete_file(path)

    def move(self, src, dest):
        self.s3.move(src, dest)

    def copy_file(self, src, dest):
        self.s3.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.s3.open_input_stream(path)

    def open_input_file(self, path):
        return self.s3.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.s3.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.s3.open_append_stream(path, metadata=metadata)


def s3_filesystem(max_attempts: int = S3_MAX_ATTEMPTS) -> pafs.FileSystem:
    """The S3 filesystem for the environment's endpoint, region and identity: one a process, reused, so requests
    share its connections and run at once from threads (a client made for each request serialised them: 16 threads
    looked files up no faster than one; docs/benchmarks.md, "Reading from S3")."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    identity = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    return configured_s3_filesystem(max_attempts, s3_endpoint(), region, identity)


@functools.lru_cache(maxsize=8)
def configured_s3_filesystem(max_attempts: int, endpoint: str | None, region: str | None,
                             identity: tuple[str | None, str | None]) -> pafs.FileSystem:
    """A new S3 filesystem; ``identity`` (the access key ID and profile, which the standard credential chain reads)
    is part of the cache key only, so a changed identity gets a filesystem of its own."""
    options = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
               "connect_timeout": S3_CONNECT_TIMEOUT}
    if endpoint:
        options["endpoint_override"] = endpoint
        options["scheme"] = "https" if endpoint.startswith("https") else "http"
    if region:
        options["region"] = region
    return pafs.PyFileSystem(NoFolderMarkers(pafs.S3FileSystem(**options)))


def delta_options(uri: str) -> dict[str, str]:
    """``storage_options`` for delta-rs at ``uri``: the endpoint, region and retries this module uses; credentials
    stay with the standard AWS chain, which delta-rs reads itself. delta-rs commits on S3 with conditional writes,
    so no lock service or unsafe rename is configured."""
    if not is_s3(uri):
        return {}
    options = {"max_retries": str(S3_MAX_ATTEMPTS - 1), "connect_timeout": f"{S3_CONNECT_TIMEOUT:g}s"}
    endpoint = s3_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


def check_reachable(uri: str) -> None:
    """For an S3 URI, one quick request with few attempts: an endpoint that does not answer raises StorageError
    naming it within seconds, instead of after every retry of the first real request."""
    if not is_s3(uri):
        return
    try:
        s3_filesystem(PROBE_ATTEMPTS).get_file_info(uri[len(S3_SCHEME):].rstrip("/"))
    except OSError as error:
        endpoint = s3_endpoint() or "the AWS default endpoint"
        raise StorageError(f"cannot reach S3 at {endpoint} for {uri}: {error}") from error


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a URI."""
    if is_s3(uri):
        return s3_filesystem(), uri[len(S3_SCHEME):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def to_uri(uri_like: str, path: str) -> str:
    """A path returned by the filesystem of ``uri_like``, written back as a URI of the same kind."""
    return S3_SCHEME + path if is_s3(uri_like) else path


def file_info(uri: str) -> pafs.FileInfo:
    filesystem, path = resolve(uri)
    try:
        return filesystem.get_file_info(path)
    except OSError as error:
        raise StorageError(f"cannot reach {uri}: {error}") from error


def exists(uri: str) -> bool:
    return file_info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return file_info(uri).type == pafs.FileType.Directory


def list_entries(uri: str, recursive: bool) -> list[pafs.FileInfo]:
    """What a folder or prefix holds; nothing for one that does not exist (as S3 answers for an unused prefix)."""
    filesystem, path = resolve(uri)
    try:
        return filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except (OSError, FileNotFoundError) as error:
        raise StorageError(f"cannot list {uri}: {error}") from error


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Every file under a folder or prefix, sorted, as URIs of the same kind as ``uri``."""
    infos = list_entries(uri, recursive)
    return sorted(to_uri(uri, info.path) for info in infos if info.type == pafs.FileType.File)


def relative_to(folder: str, uri: str) -> str:
    """``uri``, as a listing of ``folder`` writes it, relative to ``folder``: a local listing gives absolute paths
    whether ``folder`` was written relative (``out/demo``) or not."""
    base = folder if is_s3(folder) else os.path.abspath(os.path.expanduser(folder))
    return uri[len(base.rstrip("/")):].lstrip("/")


def list_file_versions(uri: str) -> list[tuple[str, int, float]]:
    """(URI, size in bytes, modification time) of every file under a folder or prefix, sorted, from one listing:
    what changes when a file is replaced."""
    infos = [info for info in list_entries(uri, recursive=True) if info.type == pafs.FileType.File]
    return sorted((to_uri(uri, info.path), int(info.size or 0), info.mtime.timestamp() if info.mtime else 0.0)
                  for info in infos)


def list_dirs(uri: str) -> list[str]:
    """The immediate sub-folders of a folder or prefix, sorted."""
    infos = list_entries(uri, recursive=False)
    return sorted(to_uri(uri, info.path) for info in infos if info.type == pafs.FileType.Directory)


def read_bytes(uri: str, max_bytes: int | None = None, timeout: float = READ_TIMEOUT) -> bytes:
    """The file's bytes; raises StorageError naming the file when it cannot be read, is not a regular file, exceeds
    ``max_bytes`` or is not read within ``timeout`` seconds."""
    return within(timeout, f"reading {uri}", read_s3 if is_s3(uri) else read_local, uri, max_bytes)


def within(seconds: float, what: str, function, *args):
    """``function(*args)``, waited for at most ``seconds``: it runs in a thread of its own, left behind (a daemon)
    when it overruns, since a read blocked in the kernel cannot be interrupted; StorageError saying ``what`` did
    not finish."""
    outcome: dict = {}
    done = threading.Event()

    def call() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the caller's thread, raised there
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=call, name="bounded-read", daemon=True).start()
    if not done.wait(seconds):
        raise StorageError(f"{what} did not finish within {seconds:g} s (a stalled disk or network share?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def read_s3(uri: str, max_bytes: int | None) -> bytes:
    filesystem, path = resolve(uri)
    try:
        with filesystem.open_input_file(path) as stream:
            if max_bytes is not None and stream.size() > max_bytes:
                raise FileTooLargeError(f"{uri} is {stream.size()} bytes, over the limit of {max_bytes}")
            return stream.read()
    except OSError as error:
        raise StorageError(f"cannot read {uri}: {error}") from error


def read_local(uri: str, max_bytes: int | None) -> bytes:
    """A local regular file's bytes. Its kind is checked before it is opened (opening a FIFO waits for a writer)
    and again on the open file, which is opened without blocking, in case it was swapped in between."""
    path = os.path.abspath(uri)
    try:
        refuse_special(uri, path, os.stat(path).st_mode)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise StorageError(f"cannot read {uri}: {error.strerror or error}") from error
    with os.fdopen(descriptor, "rb") as stream:
        status = os.fstat(stream.fileno())
        refuse_special(uri, path, status.st_mode)
        if max_bytes is not None and status.st_size > max_bytes:
            raise FileTooLargeError(f"{uri} is {status.st_size} bytes, over the limit of {max_bytes}")
        try:
            return stream.read()
        except OSError as error:
            raise StorageError(f"cannot read {uri}: {error.strerror or error}") from error


def refuse_special(uri: str, path: str, mode: int) -> None:
    """StorageError naming what ``path`` is, unless it is a regular file; a folder that cannot be listed says so
    (the listing names such a folder for want of its files)."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                pass
        except OSError as error:
            raise StorageError(f"{uri} is a folder that cannot be listed ({error.strerror or error}): its files "
                               f"were not screened") from error
        raise StorageError(f"{uri} is a folder, not a file")
    kind = next((name for test, name in SPECIAL_FILES if test(mode)), "an unknown kind of file")
    raise StorageError(f"{uri} is {kind}, not a regular file: not read")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file: one PUT on S3; a temporary file renamed into place on disk."""
    filesystem, path = resolve(uri)
    target = path
    if not is_s3(uri):
        path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        filesystem.create_dir(posixpath.dirname(path) if is_s3(uri) else os.path.dirname(path), recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
        if path != target:
            os.replace(path, target)
    except OSError as error:
        raise StorageError(f"cannot write {uri}: {error}") from error


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def move_tree(source: str, destination: str) -> None:
    """Move a folder with its structure: one rename on disk; a copy of each object, then deletion, on S3."""
    filesystem, source_path = resolve(source)
    _, destination_path = resolve(destination)
    try:
        if not is_s3(source):
            filesystem.create_dir(os.path.dirname(destination_path), recursive=True)
            filesystem.move(source_path, destination_path)
            return
        for info in filesystem.get_file_info(pafs.FileSelector(source_path, recursive=True)):
            if info.type == pafs.FileType.File:
                filesystem.copy_file(info.path, destination_path + info.path[len(source_path):])
        filesystem.delete_dir(source_path)
    except OSError as error:
        raise StorageError(f"cannot move {source} to {destination}: {error}") from error


def delete_file(uri: str) -> None:
    filesystem, path = resolve(uri)
    try:
        filesystem.delete_file(path)
    except OSError as error:
        raise StorageError(f"cannot delete {uri}: {error}") from error


def delete_tree(uri: str) -> None:
    filesystem, path = resolve(uri)
    try:
        if filesystem.get_file_info(path).type == pafs.FileType.Directory:
            filesystem.delete_dir(path)
    except OSError as error:
        raise StorageError(f"cannot delete {uri}: {error}") from error
