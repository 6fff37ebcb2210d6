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
