"""Screening from a PACS against screening the same files from disk, in one run: ``--copies`` copies of the sample
archive's DICOM files (each copy its own studies, series and instances) are written to a folder and stored in a
local Orthanc with DICOMweb, then screened from the folder and from the PACS (``dicomweb+http://...``) by
``pipeline.screening.run_screening`` on one embedded Ray (after an unmeasured run that starts its workers),
``--repeats`` times each, alternating. With
``--latency-ms``, a forwarding proxy in front of the PACS adds that to every request, standing in for the distance to
a PACS elsewhere in the hospital (Orthanc on localhost answers in a few milliseconds).

    python -m tools.pacs_benchmark --copies 40 --repeats 2 --latency-ms 0 20

Each line printed is JSON: for each run its listing time (the walk, or the searches), the scoring stage's images/s
(from the actors starting to the last row) and the whole run's, and for a PACS run the CPU seconds Orthanc spent
(on the same cores as the scoring here; a PACS elsewhere spends its own). Needs Orthanc and its DICOMweb plugin
(``apt-get install orthanc orthanc-dicomweb``); the Orthanc is the tests' (``tools.local_pacs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import tempfile
import time

import psutil
import pydicom
import requests
from pydicom.uid import generate_uid

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DICOM = ROOT / "samples" / "archive" / "dicom"
STUDY_DATES = ("2026-11-01", "2026-11-04")  # the sample studies' dates
KEY = "pacs-benchmark-pseudonym-key-0123456789"


def copied_archive(folder: pathlib.Path, copies: int) -> list[pathlib.Path]:
    """``copies`` copies of the sample DICOM files under ``folder``, each copy with UIDs of its own."""
    written = []
    for copy in range(copies):
        uids: dict[str, str] = {}
        for path in sorted(SAMPLE_DICOM.rglob("*.dcm")):
            dataset = pydicom.dcmread(path)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(dataset, keyword, uids.setdefault(str(getattr(dataset, keyword)), generate_uid()))
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            target = folder / f"copy-{copy:03d}" / path.relative_to(SAMPLE_DICOM)
            target.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(target)
            written.append(target)
    return written


def store(server, paths: list[pathlib.Path]) -> float:
    """Store each file in the PACS; returns the seconds it took."""
    started = time.perf_counter()
    with requests.Session() as session:
        for path in paths:
            session.post(server.url + "/instances", data=path.read_bytes(), auth=server.auth,
                         timeout=60).raise_for_status()
    return time.perf_counter() - started


def listing_seconds(location: str, options) -> tuple[int, float]:
    from pipeline.sources.listing import list_input_files

    started = time.perf_counter()
    files = list_input_files([location], pacs=options)
    return len(files), time.perf_counter() - started


def screened(location: str, output: pathlib.Path, credentials: str | None) -> dict:
    """One run over ``location`` into a fresh ``output``: its figures."""
    from pipeline.screening import ScreenConfig, run_screening
    from pipeline.screening.config import pacs_options

    config = ScreenConfig(inputs=(location,), output=str(output), run_date="2026-11-05",
                          study_date_from=STUDY_DATES[0], study_date_to=STUDY_DATES[1],
                          dicomweb_credentials_file=credentials)
    files, listed = listing_seconds(location, pacs_options(config, config.run_date))
    record = run_screening(config)
    assert record.rows_error == 0 and record.files_listed == files, record
    return {"files": files, "rows": record.rows_written, "listing_seconds": round(listed, 2),
            "scoring_seconds": round(record.scoring_seconds, 2),
            "scoring_images_per_second": round(record.scoring_images_per_second, 1),
            "run_seconds": round(record.duration_seconds, 2),
            "images_per_second": round(record.images_per_second, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=40, help="copies of the sample archive's 14 DICOM files")
    parser.add_argument("--repeats", type=int, default=2, help="runs from each source, alternating")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0],
                        help="added to every PACS request, each measured")
    arguments = parser.parse_args()
    os.environ.setdefault("PSEUDONYM_KEY", KEY)
    from infra.ray_runtime import configure_logging, ensure_ray
    from tools.local_pacs import orthanc_server
    from tools.s3_benchmark import delaying_proxy

    configure_logging()
    with tempfile.TemporaryDirectory(prefix="pacs-benchmark-") as folder:
        work = pathlib.Path(folder)
        files = copied_archive(work / "archive", arguments.copies)
        with orthanc_server(work / "orthanc") as server:
            print(json.dumps({"measured": "storing the copies in the PACS", "files": len(files),
                              "seconds": round(store(server, files), 1)}))
            credentials = work / "credentials.json"
            credentials.write_text(json.dumps({"username": server.user, "password": server.password}))
            credentials.chmod(0o600)
            ensure_ray()
            screened(str(work / "archive" / "copy-000"), work / "warm-up", None)  # Ray's workers started, unmeasured
            orthanc = psutil.Process(server.process.pid)
            for latency in arguments.latency_ms:
                proxy = delaying_proxy(server.url, latency / 1000, nodelay=True) if latency else \
                    contextlib.nullcontext(server.url)
                with proxy as url:
                    for repeat in range(arguments.repeats):
                        for source, location, secret in (("disk", str(work / "archive"), None),
                                                         ("PACS", f"dicomweb+{url}/dicom-web", str(credentials))):
                            output = work / f"results-{source}-{latency:g}-{repeat}"
                            before = sum(orthanc.cpu_times()[:2])
                            figures = screened(location, output, secret)
                            pacs = {"latency_ms": latency,
                                    "pacs_cpu_seconds": round(sum(orthanc.cpu_times()[:2]) - before, 2)}
                            print(json.dumps({"measured": f"screening from {source}", "repeat": repeat,
                                              **(pacs if source == "PACS" else {}), **figures}), flush=True)


if __name__ == "__main__":
    main()
