"""Keyed pseudonyms: stable under one key, unrelated under another, and keys handled as secrets."""

import hashlib
import hmac
import os
import stat

import pytest

from pipeline.pseudonym import PseudonymKeyError, create_key_file, load_key, pseudonymize

KEY = b"a-secret-key-of-enough-length"


def test_the_pseudonym_is_the_keyed_hash_of_kind_and_value():
    expected = hmac.new(KEY, b"patient:MRN-0042", hashlib.sha256).hexdigest()[:32]
    assert pseudonymize(" MRN-0042 ", KEY, "patient") == expected
    assert pseudonymize("MRN-0042", KEY, "study") != expected  # kinds never collide
    assert pseudonymize("MRN-0042", b"another-secret-key-entirely", "patient") != expected
    assert pseudonymize("", KEY, "patient") is None and pseudonymize(None, KEY, "patient") is None


def test_a_created_key_file_is_private_and_never_replaced(tmp_path):
    path = tmp_path / "keys" / "pseudonym.key"
    key = load_key(str(path), create=True)
    assert len(key) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(str(path), create=True) == key
    with pytest.raises(FileExistsError):
        create_key_file(path)


def test_missing_or_short_keys_are_refused_without_showing_them(tmp_path, monkeypatch):
    with pytest.raises(PseudonymKeyError, match="does not exist"):
        load_key(str(tmp_path / "absent.key"))
    monkeypatch.setenv("PSEUDONYM_KEY", "short")
    with pytest.raises(PseudonymKeyError, match="shorter than 16") as raised:
        load_key()
    assert "short" not in str(raised.value).replace("shorter", "")
    monkeypatch.delenv("PSEUDONYM_KEY")
    assert load_key() is None


def test_a_key_is_read_without_surrounding_whitespace_from_a_file_or_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "pseudonym.key"
    path.write_text("  0123456789abcdef0123\n")
    assert load_key(str(path)) == b"0123456789abcdef0123"
    monkeypatch.setenv("PSEUDONYM_KEY", "\tfedcba9876543210\n")
    assert load_key() == b"fedcba9876543210"
    assert load_key(str(path)) == b"0123456789abcdef0123"  # a named file wins over the environment
