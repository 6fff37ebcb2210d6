"""Cost as the archive grows: 1k, 10k and 50k inputs, half real JPEGs and half 512x512 16-bit DICOM slices, each
size screened by the real job in its own process (Python and Ray start included), as a night would run it.

    python -m tools.scale_benchmark --sizes 1000 10000 50000 --pool /tmp/scale-pool

The DICOM slices are written once into ``--pool`` (real slices of the shared set, resized to 512x512, 12 bits
stored, series of 20 with synthetic identifiers and positions; about 0.5 MiB each); each archive is a folder of
symbolic links to the pool and to the JPEGs. Reported per size: wall time, images/s, seconds per 1,000 images
beyond the smallest run (the marginal cost, which must stay flat), and the peak memory of the driver (resident, and
unique to it) and, apart, of every Ray process the job started (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import psutil
import pydicom

from tools.benchmark import rss_bytes
from tools.decode_benchmark import SIZE, dicom_bytes

SLICES_PER_SERIES = 20
ROOT = pathlib.Path(__file__).resolve().parent.parent


def series_attributes(index: int) -> dict:
    """Slice ``index`` of series ``index // SLICES_PER_SERIES``, three series a patient: synthetic identifiers."""
    series, position = divmod(index, SLICES_PER_SERIES)
    return {"PatientID": f"SCALE-{series // 3:06d}", "StudyDate": "20261101",
            "StudyInstanceUID": pydicom.uid.generate_uid(entropy_srcs=["scale-study", str(series // 3)]),
            "SeriesInstanceUID": pydicom.uid.generate_uid(entropy_srcs=["scale-series", str(series)]),
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SeriesDescription": "AX T1 BRAIN",
            "InstanceNumber": position + 1, "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
            "ImagePositionPatient": [0, 0, 5.0 * position]}


def build_pool(source: pathlib.Path, pool: pathlib.Path, count: int) -> list[pathlib.Path]:
    """``count`` DICOM slices under ``pool``, written once (an existing pool of that size is reused)."""
    pool.mkdir(parents=True, exist_ok=True)
    paths = [pool / f"{index:06d}.dcm" for index in range(count)]
    jpegs = itertools.cycle(sorted(source.rglob("*.jpg")))
    for index, path in enumerate(paths):
        image = cv2.resize(cv2.imread(str(next(jpegs)), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE))
        if not path.exists():
            path.write_bytes(dicom_bytes(image, **series_attributes(index)))
    return paths


def link_archive(folder: pathlib.Path, jpegs: list[pathlib.Path], dicoms: list[pathlib.Path], count: int) -> None:
    folder.mkdir()
    for index in range(count):
        target = dicoms[index // 2] if index % 2 else jpegs[(index // 2) % len(jpegs)]
        os.symlink(target.resolve(), folder / f"{index:07d}{target.suffix}")


class TreeSampler(threading.Thread):
    """Peak RSS and peak unique memory (USS) of a job's process, and apart the summed peak RSS of every process below
    it (embedded Ray). The driver's RSS also counts the pages of Ray's shared object store it has read or written
    (scored blocks arriving, listing blocks put), which belong to the store, not to the driver: USS leaves them out."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.driver, self.driver_unique, self.ray = psutil.Process(pid), 0, 0, 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.driver = max(self.driver, self.process.memory_info().rss)
                self.driver_unique = max(self.driver_unique, self.process.memory_full_info().uss)
                self.ray = max(self.ray, sum(rss_bytes(child) for child in self.process.children(recursive=True)))
            except psutil.Error:
                return
            time.sleep(0.2)


def screen(archive: pathlib.Path, output: pathlib.Path, key_file: pathlib.Path, log: pathlib.Path | None) -> dict:
    command = [sys.executable, "-m", "jobs.screen", "--input", str(archive), "--output", str(output),
               "--pseudonym-key-file", str(key_file), "--create-pseudonym-key", "--no-report"]
    started = time.perf_counter()
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(job.pid)
    sampler.start()
    stdout, stderr = job.communicate()
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    if log is not None:
        log.write_text(stderr)
    if job.returncode != 0:
        raise RuntimeError(f"jobs.screen failed: {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "rows": summary["rows_written"], "errors": summary["rows_error"],
            "series": summary["series"], "driver_peak_rss_mib": round(sampler.driver / 2**20),
            "driver_peak_uss_mib": round(sampler.driver_unique / 2**20),
            "ray_processes_peak_rss_mib": round(sampler.ray / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("../shared/datasets/brain-tumor-mri"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--pool", type=pathlib.Path, required=True, help="folder for the generated DICOM slices")
    parser.add_argument("--logs", type=pathlib.Path, help="folder to keep each job's log in (its timeline)")
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    jpegs = sorted(args.source.rglob("*.jpg"))
    if not jpegs:
        parser.error(f"no JPEG images under {args.source}")
    sizes = sorted(args.sizes)
    dicoms = build_pool(args.source, args.pool, (sizes[-1] + 1) // 2)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        key_file = pathlib.Path(scratch) / "key"
        for count in sizes:
            archive = pathlib.Path(scratch) / f"archive-{count}"
            link_archive(archive, jpegs, dicoms, count)
            log = args.logs / f"screen-{count}.log" if args.logs else None
            run = {"inputs": count, **screen(archive, pathlib.Path(scratch) / f"out-{count}", key_file, log)}
            run["images_per_second"] = round(count / run["seconds"], 1)
            if runs:
                first = runs[0]
                run["seconds_per_1000_beyond_smallest"] = round(
                    1000 * (run["seconds"] - first["seconds"]) / (count - first["inputs"]), 2)
            runs.append(run)
            print(json.dumps(run), flush=True)
    print(json.dumps({"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
