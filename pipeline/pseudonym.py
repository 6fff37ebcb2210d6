"""Pseudonyms for patient, study and series identifiers: HMAC-SHA256 under a secret key.

The key comes from ``PSEUDONYM_KEY`` or a key file; it is never logged or written to any output. A plain hash
of a medical record number can be reversed by enumeration, a keyed hash cannot without the key. The same key gives
the same pseudonym in every run, so results join across months; another key gives unrelated pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pathlib
import secrets

KEY_ENVIRONMENT_VARIABLE = "PSEUDONYM_KEY"
MINIMUM_KEY_BYTES = 16


class PseudonymKeyError(RuntimeError):
    """No usable pseudonym key; the message says how to provide one (never the key)."""


def load_key(key_file: str | None = None, create: bool = False) -> bytes | None:
    """The key from ``key_file`` (created when asked and missing), else from the environment, else None."""
    if key_file:
        path = pathlib.Path(key_file)
        if not path.exists() and create:
            create_key_file(path)
        if not path.exists():
            raise PseudonymKeyError(f"pseudonym key file {key_file} does not exist")
        return validate_key(path.read_text().strip().encode())
    value = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    return validate_key(value.strip().encode()) if value else None


def create_key_file(path: pathlib.Path) -> None:
    """A new random key, in a file readable by its owner only from the moment it exists (never replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as key_file:
        key_file.write(secrets.token_hex(32))


def validate_key(key: bytes) -> bytes:
    if len(key) < MINIMUM_KEY_BYTES:
        raise PseudonymKeyError(f"the pseudonym key is shorter than {MINIMUM_KEY_BYTES} characters")
    return key


def pseudonymize(value: str | None, key: bytes, kind: str) -> str | None:
    """``kind``-prefixed keyed hash of an identifier (kind keeps a patient and a study with one ID apart)."""
    if value is None or str(value).strip() == "":
        return None
    digest = hmac.new(key, f"{kind}:{str(value).strip()}".encode(), hashlib.sha256).hexdigest()
    return digest[:32]
