"""Throughput and memory of the screening pipeline on this machine (results go to docs/benchmarks.md).

    python -m tools.benchmark --source ../shared/datasets/brain-tumor-mri/Training --images 1000 2000

For each size it links that many real JPEGs into a scratch archive, runs a whole screening job on an embedded
Ray, and reports images per second and the peak resident memory of all Ray and driver processes together (sampled
every 0.5 s). It also times the model alone on pre-decoded inputs, the ceiling the pipeline is measured against.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import tempfile
import threading
import time

import numpy as np
import psutil

from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.predict import ProbabilityPredictor, load_classifier
from model.decode import DecodeLimits
from model.registry import DEFAULT_MODEL
from pipeline.screen import ScreenConfig, run_screening


def link_archive(source: pathlib.Path, count: int, folder: pathlib.Path) -> None:
    files = sorted(source.rglob("*.jpg"))
    for index, path in enumerate(itertools.islice(itertools.cycle(files), count)):
        os.symlink(path.resolve(), folder / f"{index:07d}.jpg")


class MemorySampler(threading.Thread):
    """Peak total RSS of this process and every Ray process on the machine (psutil, sampled every 0.5 s)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, sum(rss_bytes(process) for process in ray_and_own_processes()))
            time.sleep(0.5)


def ray_and_own_processes() -> list[psutil.Process]:
    """This process and every process whose command line mentions ray (raylet, workers, GCS)."""
    own = psutil.Process()
    found = [own]
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid != own.pid and "ray" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def rss_bytes(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:  # the process ended between listing and reading
        return 0


def model_only_rates(model_uri: str, images: int = 512, repeats: int = 3) -> dict:
    """The model alone on pre-decoded inputs, batch 64, per backend and thread count (median of ``repeats``): the
    ceiling the pipeline is measured against, and the basis of the "auto" backend choice."""
    from model.onnx_runtime import OnnxPredictor

    info = registry.load_model_info(model_uri)
    batch = np.random.default_rng(0).integers(0, 255, (images, info.preprocessing.image_size,
                                                        info.preprocessing.image_size), dtype=np.uint8)
    rates = {}
    for threads in (1, 2):
        predictors = {"onnx": OnnxPredictor.for_model(info, cpu_threads=threads)}
        if threads == 2:  # TensorFlow's thread pools are fixed once it has started: measured at 2 threads only
            predictors["tensorflow"] = ProbabilityPredictor(load_classifier(info))
        for backend, predictor in predictors.items():
            predictor(batch[:64])
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                predictor(batch)
                seconds.append(time.perf_counter() - started)
            rates[f"{backend}_{threads}_threads"] = round(images / float(np.median(seconds)), 1)
    return rates


def plain_loop_rate(source: pathlib.Path, count: int, model_uri: str, backend: str) -> float:
    """The reference the pipeline must beat: one process, no Ray, each file read, decoded, preprocessed (the
    pipeline's own stage functions) and scored in batches of 64, on 2 inference threads."""
    from model.onnx_runtime import OnnxPredictor
    from pipeline.stages import StageContext, file_rows

    info = registry.load_model_info(model_uri)
    predictor = (OnnxPredictor.for_model(info, cpu_threads=2) if backend == "onnx"
                 else ProbabilityPredictor(load_classifier(info)))
    context = StageContext("loop", "1970-01-01", info.preprocessing, DecodeLimits(), None, 0.5, info.version,
                           info.weights_sha256)
    files = list(itertools.islice(itertools.cycle(sorted(source.rglob("*.jpg"))), count))
    predictor(np.zeros((64, info.preprocessing.image_size, info.preprocessing.image_size), np.uint8))
    started = time.perf_counter()
    for start in range(0, len(files), 64):
        rows = [row for path in files[start:start + 64] for row in file_rows(str(path), context)]
        predictor(np.stack([row["image"] for row in rows if row["status"] == "ok"]))
    return count / (time.perf_counter() - started)


def screen_once(source: pathlib.Path, count: int, model_uri: str, backend: str = "auto") -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        archive = pathlib.Path(scratch) / "archive"
        archive.mkdir()
        link_archive(source, count, archive)
        sampler = MemorySampler()
        sampler.start()
        started = time.perf_counter()
        summary = run_screening(ScreenConfig(inputs=(str(archive),), output=str(pathlib.Path(scratch) / "out"),
                                             model=model_uri, backend=backend))
        seconds = time.perf_counter() - started
        sampler.running = False
        sampler.join()
    return {"images": count, "backend": backend, "rows": summary.rows_written, "seconds": round(seconds, 1),
            "images_per_second": round(count / seconds, 1), "peak_rss_gib": round(sampler.peak / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("../shared/datasets/brain-tumor-mri"))
    parser.add_argument("--images", type=int, nargs="+", default=[1000])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "onnx"], choices=["tensorflow", "onnx"])
    args = parser.parse_args()
    if not any(args.source.rglob("*.jpg")):
        parser.error(f"no JPEG images under {args.source} (give --source a folder of JPEGs)")
    configure_logging()
    ensure_ray()
    results = {"model_only_images_per_second": model_only_rates(args.model),
               "plain_loop_images_per_second": {
                   backend: round(plain_loop_rate(args.source, max(args.images), args.model, backend), 1)
                   for backend in args.backends},
               "runs": [screen_once(args.source, count, args.model, backend) for count in args.images
                        for backend in args.backends]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
