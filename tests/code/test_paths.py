"""Paths that may carry identity: a folder name pseudonymised below the input folder (keyed, stable, the file name
kept), found again by listing with the key, and the report's file references (keyed, or from the run ID)."""

import re

from pipeline.sources import paths

KEY = b"test-pseudonym-key-0123456789abcdef"


def test_folder_names_below_the_input_are_pseudonymised_and_found_again(tmp_path):
    source = tmp_path / "exports" / "SAMPLE^ALPHA_MRN-0001" / "series 2" / "IM0001.dcm"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"x")
    hide = paths.PathPseudonymizer(KEY, [str(tmp_path / "exports")])
    stored = hide(str(source))
    assert re.fullmatch(re.escape(str(tmp_path / "exports")) + r"/d-[0-9a-f]{16}/d-[0-9a-f]{16}/IM0001\.dcm", stored)
    assert stored == paths.PathPseudonymizer(KEY, [str(tmp_path / "exports")])(str(source))  # stable
    assert "MRN" not in stored and paths.resolve_pseudonymized(stored, KEY) == str(source)
    assert paths.resolve_pseudonymized(stored, b"another-key-0123456789abcdefghij") is None
    outside = paths.PathPseudonymizer(KEY, [])(str(source))  # a manifest line: every folder hidden
    assert outside.startswith("/d-") and outside.endswith("/IM0001.dcm")
    assert paths.resolve_pseudonymized(outside, KEY) == str(source)


def test_an_s3_bucket_stays_and_the_folders_below_it_do_not():
    stored = paths.PathPseudonymizer(KEY, [])("s3://archive/SAMPLE^ALPHA/scan.jpg")
    assert re.fullmatch(r"s3://archive/d-[0-9a-f]{16}/scan\.jpg", stored)


def test_file_references_are_keyed_or_drawn_from_the_run():
    keyed = paths.file_reference("/exports/SAMPLE^ALPHA/scan.jpg", KEY)
    assert paths.REFERENCE.fullmatch(keyed) and keyed.startswith("f-")
    assert keyed != paths.file_reference("/exports/SAMPLE^ALPHA/scan.jpg", b"another-key-0123456789abcdefghij")
    from_run = paths.file_reference("/exports/SAMPLE^ALPHA/scan.jpg", None, "20261106T000000Z-00000000")
    assert paths.REFERENCE.fullmatch(from_run) and from_run.startswith("r-")
    assert paths.file_name("/exports/SAMPLE^ALPHA/scan.jpg") == paths.file_name("s3://b/SAMPLE^ALPHA/scan.jpg")
