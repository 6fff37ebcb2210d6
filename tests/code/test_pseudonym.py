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


def key_file(tmp_path, content: bytes, mode: int = 0o600):
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("content, message", [
    (b"\xef\xbb\xbf" + b"0123456789abcdef0123456789abcdef", "byte-order mark"),
    (bytes(range(255, 191, -1)), "not UTF-8 text"),
    (b"0123456789abcdef\x00\x01\x02\x03", "control or invisible characters"),
    (b"0123456789abcdef" * 300, "larger than 4096 bytes"),
])
def test_a_key_file_that_is_not_one_line_of_utf8_text_is_refused_in_one_sentence(tmp_path, content, message):
    path = key_file(tmp_path, content)
    with pytest.raises(PseudonymKeyError, match=message) as raised:
        load_key(str(path))
    said = str(raised.value)
    assert str(path) in said and "\n" not in said
    assert not any(ord(character) > 127 or character in "\x00\x01" for character in said)  # no key byte shown


def test_a_key_given_in_the_environment_obeys_the_same_rule(monkeypatch):
    monkeypatch.setenv("PSEUDONYM_KEY", "\ufeff0123456789abcdef0123456789abcdef")
    with pytest.raises(PseudonymKeyError, match="PSEUDONYM_KEY starts with a byte-order mark"):
        load_key()
    monkeypatch.setenv("PSEUDONYM_KEY", "0123456789abcdef\x1b[2J0123456789abcdef")
    with pytest.raises(PseudonymKeyError, match="control or invisible characters"):
        load_key()


def test_a_key_path_that_is_no_regular_file_is_refused_without_blocking(tmp_path):
    with pytest.raises(PseudonymKeyError, match="is a directory, not a file"):
        load_key(str(tmp_path))
    with pytest.raises(PseudonymKeyError, match="is a directory"):
        load_key(str(tmp_path), create=True)
    fifo = tmp_path / "pseudonym.fifo"
    os.mkfifo(fifo)
    with pytest.raises(PseudonymKeyError, match="not a regular file"):
        load_key(str(fifo))  # opening it would wait for a writer forever
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.key")
    with pytest.raises(PseudonymKeyError, match="does not exist"):
        load_key(str(tmp_path / "dangling.key"), create=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_file_is_refused_in_one_sentence(tmp_path):
    path = key_file(tmp_path, b"0123456789abcdef0123456789abcdef", mode=0o000)
    with pytest.raises(PseudonymKeyError, match="cannot be read"):
        load_key(str(path))


def test_a_weak_key_or_a_key_file_others_may_read_is_used_with_a_warning(tmp_path, caplog):
    strong = "7f3a9c0e5b2d8146af0c3e9d7b5a2f18c4e6d0b9a3f7e1c5"
    path = key_file(tmp_path, strong.encode())
    with caplog.at_level("WARNING", logger="pipeline.pseudonym"):
        assert load_key(str(path)) == strong.encode()
    assert caplog.records == []
    for content, mode, warned in ((strong.encode(), 0o644, "other users (mode 0o644)"),
                                  (strong.encode(), 0o640, "its group"),
                                  (b"0123456789abcdefghij", 0o600, "weak (20 characters"),
                                  (b"abababababababababababababababababab", 0o600, "2 distinct")):
        caplog.clear()
        path = key_file(tmp_path, content, mode)
        with caplog.at_level("WARNING", logger="pipeline.pseudonym"):
            assert load_key(str(path)) == content
        assert warned in caplog.text and content.decode() not in caplog.text
