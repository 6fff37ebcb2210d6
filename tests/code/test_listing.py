"""Listing what to score: folders walked, DICOMDIR skipped, folder links not followed, manifests read."""

import os

import pytest

from infra import storage
from pipeline.listing import list_inputs


def test_folders_are_walked_without_dicomdir_or_followed_links(tmp_path):
    archive = tmp_path / "archive"
    (archive / "series" / "deep").mkdir(parents=True)
    for name in ("series/1.dcm", "series/deep/2", "series/DICOMDIR", "loose.jpg"):
        (archive / name).write_bytes(b"x")
    os.symlink(archive, archive / "series" / "loop")  # a link back up: must not trap the walk
    single = tmp_path / "single.png"
    single.write_bytes(b"x")
    assert list_inputs([str(archive), str(single), str(archive / "loose.jpg")]) == sorted(
        [str(archive / "series" / "1.dcm"), str(archive / "series" / "deep" / "2"), str(archive / "loose.jpg"),
         str(single)])


def test_a_manifest_lists_files_and_skips_comments(tmp_path):
    manifest = tmp_path / "tonight.txt"
    manifest.write_text("# exported 02:00\n\n/pacs/a.dcm\n  s3://bucket/b.dcm  \n/pacs/a.dcm\n")
    assert list_inputs([], [str(manifest)]) == ["/pacs/a.dcm", "s3://bucket/b.dcm"]


def test_a_missing_input_is_a_storage_error_naming_it(tmp_path):
    with pytest.raises(storage.StorageError, match="nothing-here"):
        list_inputs([str(tmp_path / "nothing-here")])


def test_a_link_to_a_folder_is_not_followed_and_a_link_to_a_file_is_listed(tmp_path):
    outside, archive = tmp_path / "outside", tmp_path / "archive"
    outside.mkdir()
    archive.mkdir()
    (outside / "private.dcm").write_bytes(b"x")
    (archive / "own.dcm").write_bytes(b"x")
    os.symlink(outside, archive / "linked-folder")
    os.symlink(outside / "private.dcm", archive / "linked-file.dcm")
    assert list_inputs([str(archive)]) == [str(archive / "linked-file.dcm"), str(archive / "own.dcm")]


def test_manifest_lines_naming_folders_are_walked_and_dicomdir_is_skipped_in_any_case(tmp_path):
    for name in ("one/a.dcm", "one/DicomDir", "two/b.dcm"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{tmp_path / 'one'}\n{tmp_path / 'two'}/\n/pacs/DICOMDIR\n/pacs/c.dcm\n")
    assert list_inputs([], [str(manifest)]) == sorted(
        ["/pacs/c.dcm", str(tmp_path / "one" / "a.dcm"), str(tmp_path / "two" / "b.dcm")])
