"""Listing what to score: folders walked, DICOMDIR skipped, folder links not followed, manifests read; hostile
trees (a FIFO, a folder that cannot be listed, thousands of levels, one file spelt two ways) cost no night."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from infra import storage
from pipeline.sources.listing import list_inputs
from tests.conftest import ROOT


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

    from pipeline.sources.listing import list_input_files

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

    from pipeline.sources import listing

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

    from pipeline.sources.listing import stage_listing

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

    from pipeline.sources.listing import list_input_files

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


def finished_within(seconds: float, function, *args):
    """``function(*args)`` run in a daemon thread; its result, or AssertionError when it is still running after
    ``seconds`` (a blocked open of a FIFO cannot be interrupted: the thread is left behind)."""
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(value=function(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "value" in outcome, f"{getattr(function, '__name__', function)} still running after {seconds} s"
    return outcome["value"]


def release(fifo) -> None:
    """Open a FIFO's writing end without blocking, so a reader left waiting on it (on a failure) goes on."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waits


def error_rows(uris: list[str]) -> dict[str, tuple[str, str, str]]:
    """Each URI's rows as the decoding stage makes them: (status, error code, message) of its first row."""
    from pipeline.scoring.stages import file_rows
    from tests.pipeline.test_stages import context

    rows = {uri: file_rows(uri, context(160))[0] for uri in uris}
    return {uri: (row["status"], row["error_code"], row["error_message"]) for uri, row in rows.items()}


def test_a_fifo_a_socket_and_a_device_become_error_rows_naming_what_they_are(tmp_path):
    archive = tmp_path / "in"
    archive.mkdir()
    shutil.copy(ROOT / "samples" / "archive" / "loose" / "tumor-y147.png", archive / "a.png")
    fifo, sock = archive / "x.dcm", archive / "s.dcm"
    os.mkfifo(fifo)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    manifest = tmp_path / "m.txt"
    manifest.write_text("/dev/null\n")
    try:
        uris = finished_within(30, list_inputs, [str(archive)], [str(manifest)])
        assert uris == sorted([str(archive / "a.png"), str(fifo), str(sock), "/dev/null"])
        rows = finished_within(30, error_rows, uris)
    finally:
        release(fifo)
        listener.close()
    assert rows[str(archive / "a.png")][0] == "ok"
    for uri, kind in ((str(fifo), "FIFO"), (str(sock), "socket"), ("/dev/null", "character device")):
        status, code, message = rows[uri]
        assert (status, code) == ("error", "unreadable_file") and kind in message and uri in message


def test_a_read_that_stalls_is_bounded_in_time(tmp_path):
    """A blocked open (a FIFO with no writer, as a stalled network share blocks a read) under the reader's
    deadline: a StorageError within the time, not a night that never ends."""
    fifo = tmp_path / "stalls"
    os.mkfifo(fifo)
    started = time.monotonic()
    try:
        with pytest.raises(storage.StorageError, match="did not finish within 1 s"):
            storage.within(1.0, f"reading {fifo}", lambda: open(fifo, "rb").read())
    finally:
        release(fifo)
    assert time.monotonic() - started < 10


def test_a_folder_removed_during_the_walk_is_listed_and_becomes_an_error_row(tmp_path):
    from pipeline.sources.listing import iter_input_files

    archive = tmp_path / "in"
    for name in ("a/1.jpg", "b/2.jpg"):
        (archive / name).parent.mkdir(parents=True)
        (archive / name).write_bytes(b"x")
    found = iter_input_files([str(archive)])
    first = next(found).uri
    gone = archive / ("b" if first.endswith("1.jpg") else "a")
    shutil.rmtree(gone)  # a real failure to list it, as any user (root included) meets it
    assert [file.uri for file in found] == [str(gone)]
    status, code, message = error_rows([str(gone)])[str(gone)]
    assert (status, code) == ("error", "unreadable_file") and str(gone) in message


LOCKED_LISTING = """
import json, sys
from pipeline.sources.listing import list_inputs
from tests.code.test_listing import error_rows
uris = list_inputs([sys.argv[1]])
print(json.dumps({"uris": uris, "rows": error_rows(uris)}))
"""


def test_a_folder_that_cannot_be_listed_becomes_an_error_row_saying_why(tmp_path):
    """``chmod 000`` on a sub-folder, as the issue found it: root reads any folder, so as root the listing runs in
    a process without the capabilities that override file permissions (setpriv), where the kernel refuses it."""
    archive = tmp_path / "in"
    for name in ("locked/a.jpg", "open/b.jpg"):
        (archive / name).parent.mkdir(parents=True)
        (archive / name).write_bytes(b"x")
    command = [sys.executable, "-c", LOCKED_LISTING, str(archive)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: no way to be refused a folder")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    (archive / "locked").chmod(0)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        (archive / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout.splitlines()[-1])
    locked = str(archive / "locked")
    assert listed["uris"] == [locked, str(archive / "open" / "b.jpg")]
    status, code, message = listed["rows"][locked]
    assert (status, code) == ("error", "unreadable_file") and "cannot be listed" in message
    assert "Permission denied" in message and f"folder {locked} cannot be listed" in done.stderr


def deep_folder(root, depth: int) -> str:
    """A chain of ``depth`` one-letter folders under ``root`` with a file at the bottom, made without recursion
    (``os.makedirs`` recurses too); its path."""
    descriptor = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=descriptor)
        below = os.open("d", os.O_RDONLY, dir_fd=descriptor)
        os.close(descriptor)
        descriptor = below
    os.close(os.open("x.jpg", os.O_CREAT | os.O_WRONLY, dir_fd=descriptor))
    os.close(descriptor)
    return os.path.join(str(root), *["d"] * depth, "x.jpg")


def remove_deep_folder(root, depth: int) -> None:
    """Remove what ``deep_folder`` made, bottom up, without recursion (``shutil.rmtree`` recurses)."""
    descriptors = [os.open(root, os.O_RDONLY)]
    for _ in range(depth):
        descriptors.append(os.open("d", os.O_RDONLY, dir_fd=descriptors[-1]))
    os.unlink("x.jpg", dir_fd=descriptors[-1])
    for level in range(depth, 0, -1):
        os.close(descriptors[level])
        os.rmdir("d", dir_fd=descriptors[level - 1])
    os.close(descriptors[0])


def test_a_tree_two_thousand_folders_deep_is_listed(tmp_path):
    depth = 2_000  # one-letter names: about 4,000 characters of path, within Linux's 4,096
    assert depth > sys.getrecursionlimit()
    bottom = deep_folder(tmp_path, depth)
    try:
        assert list_inputs([str(tmp_path)]) == [bottom]
    finally:
        remove_deep_folder(tmp_path, depth)


def test_one_file_spelt_two_ways_is_listed_once_by_its_absolute_normalised_path(tmp_path, monkeypatch):
    folder = tmp_path / "M"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jpg").write_bytes(b"y")
    manifest = folder / "tonight.txt"
    manifest.write_text(f"a.jpg\n./../M/a.jpg\n{folder}//./a.jpg\nsub/../sub/\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative manifest lines are the manifest folder's, whatever the job's folder
    expected = [str(folder / "a.jpg"), str(folder / "sub" / "b.jpg")]
    assert list_inputs([], [str(manifest)]) == expected
    assert list_inputs(["../M/sub/..//a.jpg", "../M/./sub"], [os.path.relpath(manifest)]) == expected


def test_an_output_inside_an_input_is_refused_naming_both(tmp_path):
    from pipeline.sources.listing import refuse_output_inside_inputs

    archive = tmp_path / "in"
    (archive / "x").mkdir(parents=True)
    os.symlink(archive / "x", tmp_path / "link")
    for output, inputs in (((archive / "results"), [str(tmp_path / "other"), str(archive)]),
                           (archive, [str(archive)]), (tmp_path / "link" / "out", [f"{archive}/"]),
                           ("s3://bucket/in/out", ["s3://bucket/in/"])):
        with pytest.raises(storage.StorageError, match=f"the output {output} is inside the input"):
            refuse_output_inside_inputs(str(output), inputs)
    for output, inputs in ((tmp_path / "out", [str(archive)]), (tmp_path / "inbox", [str(archive)]),
                           ("s3://bucket/inbox", ["s3://bucket/in"]), (str(archive / "o"), ["s3://bucket/in"])):
        refuse_output_inside_inputs(str(output), inputs)
