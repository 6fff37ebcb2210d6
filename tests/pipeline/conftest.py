"""Fixtures for the scoring pipeline: the model under test and an archive with good and bad files."""

import os
import pathlib
import shutil

import pytest

from model.registry import DEFAULT_MODEL
from tests.conftest import SAMPLES
from tests.support.corpus import BAD_FILES


@pytest.fixture(scope="session")
def model_uri() -> str:
    """The shipped model, unless MRI_SCREEN_TEST_MODEL names another model or registry folder."""
    return os.environ.get("MRI_SCREEN_TEST_MODEL", DEFAULT_MODEL)


@pytest.fixture(scope="session")
def mixed_archive(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """The sample archive plus one file of each bad kind, a DICOMDIR, a unicode name and a symlink loop."""
    root = tmp_path_factory.mktemp("archive") / "archive"
    shutil.copytree(SAMPLES / "archive", root)
    for name, (_, make) in BAD_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(make())
    (root / "dicom" / "DICOMDIR").write_bytes(b"\x00" * 200)
    source = next((root / "loose").glob("glioma-*.jpg"))
    shutil.copy(source, root / "loose" / "scan ü 01 (copy).jpg")
    os.symlink(root, root / "bad" / "loop")
    return root, {name: code for name, (code, _) in BAD_FILES.items()}
