"""Local storage through the same API as S3: whole-file writes, listing, limits, moves and clear errors."""

import pytest

from infra import storage


def test_files_are_written_whole_listed_and_read_back(tmp_path):
    root = str(tmp_path / "out")
    storage.write_text(storage.join(root, "a", "one.txt"), "first")
    storage.write_bytes(storage.join(root, "a", "b", "two.bin"), b"\x00\x01")
    assert storage.exists(storage.join(root, "a", "one.txt")) and storage.is_dir(storage.join(root, "a"))
    assert storage.list_files(root) == sorted([storage.join(root, "a", "one.txt"),
                                               storage.join(root, "a", "b", "two.bin")])
    assert storage.list_files(storage.join(root, "a"), recursive=False) == [storage.join(root, "a", "one.txt")]
    assert storage.list_dirs(root) == [storage.join(root, "a")]
    assert storage.read_text(storage.join(root, "a", "one.txt")) == "first"
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["b", "one.txt"]  # no temporary left


def test_a_file_over_the_byte_limit_is_refused_unread(tmp_path):
    path = tmp_path / "big.dcm"
    path.write_bytes(b"x" * 100)
    assert storage.read_bytes(str(path), max_bytes=100) == b"x" * 100
    with pytest.raises(storage.FileTooLargeError, match="100 bytes, over the limit of 99"):
        storage.read_bytes(str(path), max_bytes=99)


def test_a_missing_file_raises_a_storage_error_naming_it(tmp_path):
    missing = str(tmp_path / "nowhere" / "x.dcm")
    with pytest.raises(storage.StorageError, match="nowhere/x.dcm"):
        storage.read_bytes(missing)
    assert not storage.exists(missing) and not storage.is_dir(missing)
    assert storage.list_files(str(tmp_path / "nowhere")) == []  # like an unused S3 prefix


def test_moving_a_folder_keeps_its_structure(tmp_path):
    source, destination = tmp_path / "runs", tmp_path / "aside" / "runs"
    (source / "run_date=2026-11-01").mkdir(parents=True)
    (source / "p-0.parquet").write_bytes(b"0")
    (source / "run_date=2026-11-01" / "p-1.parquet").write_bytes(b"1")
    storage.move_tree(str(source), str(destination))
    assert sorted(str(p.relative_to(destination)) for p in destination.rglob("*.parquet")) == [
        "p-0.parquet", "run_date=2026-11-01/p-1.parquet"]
    assert not source.exists()


def test_s3_uris_join_with_slashes_and_local_ones_with_the_os():
    assert storage.join("s3://bucket/prefix/", "a", "b.txt") == "s3://bucket/prefix/a/b.txt"
    assert storage.is_s3("s3://bucket") and not storage.is_s3("/data/s3:/x")


def test_listing_a_missing_folder_gives_nothing_as_an_unused_s3_prefix_does(tmp_path):
    missing = str(tmp_path / "no-such-export")
    assert storage.list_files(missing) == [] and storage.list_dirs(missing) == []
    assert storage.list_file_versions(missing) == []


def test_a_rewritten_text_file_holds_only_the_new_text(tmp_path):
    path = str(tmp_path / "notes.txt")
    storage.write_text(path, "a long first version of the text")
    storage.write_text(path, "Größe 2 mm")
    assert storage.read_text(path) == "Größe 2 mm"
    assert (tmp_path / "notes.txt").read_bytes() == "Größe 2 mm".encode("utf-8")
    assert storage.exists(path) and not storage.is_dir(path)
    assert storage.list_dirs(str(tmp_path)) == []
