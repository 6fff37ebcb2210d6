"""Pseudonyms for patient, study and series identifiers: HMAC-SHA256 under a secret key.

The key comes from ``PSEUDONYM_KEY`` or a key file; it is never logged or written to any output. A plain hash
of a medical record number can be reversed by enumeration, a keyed hash cannot without the key. The same key gives
the same pseudonym in every run, so results join across months; another key gives unrelated pseudonyms.

One rule reads the key, for every job: a key file is a regular file of UTF-8 text, read whole and stripped of the
whitespace around it; the environment variable's value is stripped the same way. A key file that is missing, not a
regular file, unreadable, not UTF-8, or that starts with a byte-order mark (which would silently change every
pseudonym), and a key holding control characters or shorter than ``MINIMUM_KEY_BYTES``, is refused with one
sentence (``PseudonymKeyError``, exit 2) that never shows the key. A key shorter than ``ADVISED_KEY_BYTES`` or of
few distinct characters, and a key file its group or other users may read, is used with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pathlib
import secrets
import stat

logger = logging.getLogger("pipeline.pseudonym")

KEY_ENVIRONMENT_VARIABLE = "PSEUDONYM_KEY"
MINIMUM_KEY_BYTES = 16
ADVISED_KEY_BYTES = 32  # a generated key has 64 hex digits
ADVISED_DISTINCT_CHARACTERS = 8
MAXIMUM_KEY_FILE_BYTES = 4096  # a key, not a document: a larger file is the wrong file


class PseudonymKeyError(RuntimeError):
    """No usable pseudonym key; the message says how to provide one (never the key)."""


def load_key(key_file: str | None = None, create: bool = False) -> bytes | None:
    """The key from ``key_file`` (created when asked and missing), else from the environment, else None."""
    if key_file:
        path = pathlib.Path(key_file)
        if create and not os.path.lexists(path):
            try:
                create_key_file(path)
            except OSError as error:
                raise PseudonymKeyError(f"pseudonym key file {key_file} cannot be created ({error.strerror})") from None
        return validate_key(read_key_file(path), f"the pseudonym key in {key_file}")
    value = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    return validate_key(value, f"the pseudonym key in {KEY_ENVIRONMENT_VARIABLE}") if value else None


def read_key_file(path: pathlib.Path) -> str:
    """The text of a key file, or a ``PseudonymKeyError`` saying in one sentence why it cannot be the key. Opened
    without waiting (a pipe with no writer would block) and examined as opened, so nothing is swapped in between."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PseudonymKeyError(f"pseudonym key file {path} does not exist") from None
    except OSError as error:
        raise PseudonymKeyError(f"pseudonym key file {path} cannot be read ({error.strerror})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise PseudonymKeyError(f"pseudonym key file {path} is a directory, not a file holding the key")
        if not stat.S_ISREG(mode):
            raise PseudonymKeyError(f"pseudonym key file {path} is not a regular file (a pipe, socket or device)")
        warn_if_shared(path, mode)
        data = read_up_to(descriptor, MAXIMUM_KEY_FILE_BYTES + 1)
    except OSError as error:
        raise PseudonymKeyError(f"pseudonym key file {path} cannot be read ({error.strerror})") from None
    finally:
        os.close(descriptor)
    if len(data) > MAXIMUM_KEY_FILE_BYTES:
        raise PseudonymKeyError(f"pseudonym key file {path} is larger than {MAXIMUM_KEY_FILE_BYTES} bytes: not a key")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PseudonymKeyError(f"pseudonym key file {path} is not UTF-8 text (a binary file?)") from None


def read_up_to(descriptor: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit and (chunk := os.read(descriptor, limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def warn_if_shared(path: pathlib.Path, mode: int) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("pseudonym key file %s can be read or written by its group or other users (mode %s): "
                       "chmod 600 it, so only the account running the jobs reads it", path, oct(stat.S_IMODE(mode)))


def create_key_file(path: pathlib.Path) -> None:
    """A new random key, in a file readable by its owner only from the moment it exists (never replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as key_file:
        key_file.write(secrets.token_hex(32))


def validate_key(text: str, where: str = "the pseudonym key") -> bytes:
    """The key's bytes (UTF-8, surrounding whitespace stripped); refused or warned about by the module's rule."""
    key = text.strip()
    if key.startswith("\ufeff"):
        raise PseudonymKeyError(f"{where} starts with a byte-order mark, which would change every pseudonym: "
                                f"give the key without one")
    if not key.isprintable():
        raise PseudonymKeyError(f"{where} holds control or invisible characters (a binary file?): a key is one line "
                                f"of text")
    encoded = key.encode()
    if len(encoded) < MINIMUM_KEY_BYTES:
        raise PseudonymKeyError(f"{where} is shorter than {MINIMUM_KEY_BYTES} characters")
    if len(encoded) < ADVISED_KEY_BYTES or len(set(key)) < ADVISED_DISTINCT_CHARACTERS:
        logger.warning("%s is weak (%d characters, %d distinct): a random key of at least %d characters is advised, "
                       "such as the 64 hex digits --create-pseudonym-key writes", where, len(encoded), len(set(key)),
                       ADVISED_KEY_BYTES)
    return encoded


def keyed_digest(key: bytes, kind: str, value: str, digits: int) -> str:
    """The first ``digits`` hex digits of HMAC-SHA256 of ``kind:value`` under ``key``: every keyed name the project
    makes (identifiers here, file references and folder pseudonyms in ``pipeline.sources.paths``)."""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:digits]


def pseudonymize(value: str | None, key: bytes, kind: str) -> str | None:
    """``kind``-prefixed keyed hash of an identifier (kind keeps a patient and a study with one ID apart)."""
    if value is None or str(value).strip() == "":
        return None
    return keyed_digest(key, kind, str(value).strip(), 32)
