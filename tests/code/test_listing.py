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


def test_a_manifest_lists_files_and_skips_comments(tmp_path, s3_endpoint):
    import boto3

    from pipeline.listing import list_input_files

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="manifest-lines")
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket="manifest-lines", Key="b.dcm", Body=b"abc")
    manifest = tmp_path / "tonight.txt"
    manifest.write_text("# exported 02:00\n\n/pacs/a.dcm\n  s3://manifest-lines/b.dcm  \n/pacs/a.dcm\n"
                        "s3://manifest-lines/gone.dcm\n")
    files = list_input_files([], [str(manifest)])
    # a named file that is missing is still listed: decoding turns it into an error row that names it
    assert [(file.uri, file.size) for file in files] == [
        ("/pacs/a.dcm", None), ("s3://manifest-lines/b.dcm", 3), ("s3://manifest-lines/gone.dcm", None)]


def test_a_manifests_s3_files_are_looked_up_at_once_and_listed_in_its_order(tmp_path, s3_endpoint, monkeypatch):
    import boto3

    from pipeline import listing

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="manifest-order")
    names = [f"s{index}.dcm" for index in range(7)]
    for index, name in enumerate(names):
        client.put_object(Bucket="manifest-order", Key=name, Body=b"z" * (index + 1))
    local = tmp_path / "local.dcm"
    local.write_bytes(b"abcdefghij")
    uris = [f"s3://manifest-order/{name}" for name in names]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*uris[:3], str(local), *uris[3:], "s3://manifest-order/missing.dcm"]))
    monkeypatch.setattr(listing, "MANIFEST_CHUNK", 2)  # chunks end mid-manifest, and at a local line
    files = list(listing.iter_manifest(str(manifest), lookups=4))
    assert [file.uri for file in files] == [*uris[:3], str(local), *uris[3:], "s3://manifest-order/missing.dcm"]
    assert [file.size for file in files] == [1, 2, 3, 10, 4, 5, 6, 7, None]
    assert all(file.modified is not None for file in files[:-1])


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


def test_a_run_stages_its_listing_a_batch_at_a_time_and_counts_what_it_found(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.listing import stage_listing

    archive = tmp_path / "archive"
    (archive / "a" / "b").mkdir(parents=True)
    names = ["a/1.dcm", "a/b/2.dcm", "a/b/3.png", "4.jpg", "5.jpg"]
    for name in names:
        (archive / name).write_bytes(b"x" * len(name))
    listing = stage_listing([str(archive), str(archive / "4.jpg")], [], str(tmp_path / "listing"), batch_files=2)
    rows = listing.batches().read_all().to_pylist()
    assert listing.entries == len(rows) == 6 and listing.may_hold_dicom  # 4.jpg named twice: the selection keeps one
    assert sorted({row["source_uri"] for row in rows}) == sorted(str(archive / name) for name in names)
    assert all(row["source_size"] == len(row["source_uri"]) - len(str(archive)) - 1 and row["source_modified"] > 0
               for row in rows)
    parts = sorted((tmp_path / "listing").glob("*.parquet"))
    assert [group.num_rows for part in parts for group in
            (pq.ParquetFile(part).metadata.row_group(i) for i in range(pq.ParquetFile(part).num_row_groups))] \
        == [2, 2, 2]
    jpegs = stage_listing([str(archive / "4.jpg")], [], str(tmp_path / "jpegs"))
    assert (jpegs.entries, jpegs.may_hold_dicom) == (1, False)


def test_an_s3_prefix_is_walked_level_by_level_with_sizes_and_times(s3_endpoint):
    import boto3

    from pipeline.listing import list_input_files

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="listing-walk")
    keys = ["night/p1/s1/1.dcm", "night/p1/s1/2.dcm", "night/p1/s2/3", "night/p2/DICOMDIR", "night/loose.jpg",
            "other/x.dcm"]
    for key in keys:
        client.put_object(Bucket="listing-walk", Key=key, Body=b"y" * len(key))
    files = list_input_files(["s3://listing-walk/night"])
    assert [file.uri for file in files] == sorted(f"s3://listing-walk/{key}" for key in keys
                                                  if key.startswith("night/") and "DICOMDIR" not in key)
    assert all(file.size == len(file.uri) - len("s3://listing-walk/") and file.modified is not None for file in files)
    with pytest.raises(storage.StorageError, match="nothing-here"):
        list_input_files(["s3://listing-walk/nothing-here"])
