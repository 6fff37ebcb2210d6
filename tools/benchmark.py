"""Throughput and memory of the screening pipeline on this machine (results go to docs/benchmarks.md).

    python -m tools.benchmark --images 2000 8000 --repeats 3

For each size it links that many real JPEGs into a scratch archive and runs whole screening jobs on one embedded
Ray (started once, its start timed apart), reporting the median wall time, images per second and the peak
resident memory of all Ray and driver processes together (sampled every 0.5 s); the steady state is the rate
between the smallest and the largest size. The references are measured in the same run: the model alone on
pre-decoded inputs, a plain single-process loop (no Ray) doing the same work, and the cost of each part of the
per-image work on one thread.
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
from model.quantize import median_rate
from model.registry import DEFAULT_MODEL
from pipeline.screening import ScreenConfig, run_screening
from model.backends import BACKENDS, ONNX_EXPORT_OF


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
        predictors = {backend: OnnxPredictor.for_model(info, cpu_threads=threads, export=export)
                      for backend, export in ONNX_EXPORT_OF.items() if info.export_sha256(export)}
        if threads == 2:  # TensorFlow's thread pools are fixed once it has started: measured at 2 threads only
            predictors["tensorflow"] = ProbabilityPredictor(load_classifier(info))
        for backend, predictor in predictors.items():
            rates[f"{backend}_{threads}_threads"] = median_rate(predictor, batch, repeats)
    return rates


def loop_files(source: pathlib.Path, count: int) -> list[pathlib.Path]:
    return list(itertools.islice(itertools.cycle(sorted(source.rglob("*.jpg"))), count))


def loop_context(info: registry.ModelInfo):
    from pipeline.scoring.stages import StageContext

    return StageContext("loop", "1970-01-01", info.preprocessing, DecodeLimits(), None, 0.5, info.version,
                        info.weights_sha256)


def plain_loop_rate(source: pathlib.Path, count: int, model_uri: str, backend: str) -> float:
    """The reference the pipeline must beat: one process, no Ray, each file read, decoded, preprocessed (the
    pipeline's own stage functions) and scored in batches of 64, on 2 inference threads."""
    from model.onnx_runtime import OnnxPredictor
    from pipeline.scoring.stages import file_rows

    info = registry.load_model_info(model_uri)
    predictor = (OnnxPredictor.for_model(info, cpu_threads=2, export=ONNX_EXPORT_OF[backend])
                 if backend in ONNX_EXPORT_OF else ProbabilityPredictor(load_classifier(info)))
    context, files = loop_context(info), loop_files(source, count)
    predictor(np.zeros((64, info.preprocessing.image_size, info.preprocessing.image_size), np.uint8))
    started = time.perf_counter()
    for start in range(0, len(files), 64):
        rows = [row for path in files[start:start + 64] for row in file_rows(str(path), context)]
        predictor(np.stack([row["image"] for row in rows if row["status"] == "ok"]))
    return count / (time.perf_counter() - started)


def stage_costs(source: pathlib.Path, count: int, model_uri: str, batch: int = 64) -> dict:
    """Milliseconds per image of each part of a scoring actor's work, one thread, no Ray: read + sha256, decode,
    preprocess, the rows -> Arrow table, inference (ONNX Runtime), the score columns and the cast to the Parquet
    schema. Their sum against the pipeline's CPU time per image says what Ray Data itself costs."""
    import hashlib

    from model.decode import decode_file
    from model.preprocessing import preprocess_image
    from model.backends import ONNX
    from pipeline.scoring.stages import InferenceActor, bound_threads, file_rows, rows_to_table, to_predictions_table

    bound_threads(1)
    info = registry.load_model_info(model_uri)
    context, files = loop_context(info), loop_files(source, count)
    inference = InferenceActor(info.uri, info.weights_sha256, 0.5, 1, False, batch_size=256, backend=ONNX)
    parts = dict.fromkeys(["read_sha256", "decode", "preprocess", "rows_to_arrow", "inference", "scores_and_cast"],
                          0.0)
    for path in files:
        started = time.perf_counter()
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        read = time.perf_counter()
        decoded = decode_file(data, str(path))
        decode = time.perf_counter()
        preprocess_image(decoded.frames[0], info.preprocessing)
        parts["read_sha256"] += read - started
        parts["decode"] += decode - read
        parts["preprocess"] += time.perf_counter() - decode
    for start in range(0, count, batch):
        rows = [row for path in files[start:start + batch] for row in file_rows(str(path), context)]
        began = time.perf_counter()
        table = rows_to_table(rows)
        prepared = time.perf_counter()
        probabilities, features = inference.predictor.with_features(inference.images(table))
        inferred = time.perf_counter()
        scores = inference.ood.scores(features)
        to_predictions_table(inference.fill_scores(table, probabilities, np.ones(table.num_rows, bool), scores), None)
        parts["rows_to_arrow"] += prepared - began
        parts["inference"] += inferred - prepared
        parts["scores_and_cast"] += time.perf_counter() - inferred
    costs = {name: round(1000 * seconds / count, 3) for name, seconds in parts.items()}
    costs["total"] = round(sum(costs.values()), 3)
    return costs


def screen_once(archive: pathlib.Path, scratch: pathlib.Path, count: int, model_uri: str,
                backend: str = "auto") -> dict:
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    summary = run_screening(ScreenConfig(inputs=(str(archive),), output=str(scratch / f"out-{time.time_ns()}"),
                                         model=model_uri, backend=backend))
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    assert summary.rows_written == count, summary
    return {"seconds": seconds, "peak_rss_gib": sampler.peak / 2**30}


def screen_sizes(source: pathlib.Path, sizes: list[int], model_uri: str, backend: str, repeats: int) -> list[dict]:
    """Each size screened ``repeats`` times on the already started Ray (a fresh output each time), in turn, so a
    drift of the machine touches every size alike: median wall time, images/s, peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        archives = {}
        for count in sizes:
            archives[count] = pathlib.Path(scratch) / f"archive-{count}"
            archives[count].mkdir()
            link_archive(source, count, archives[count])
        measured = {count: [] for count in sizes}
        for _ in range(repeats):
            for count in sizes:
                measured[count].append(screen_once(archives[count], pathlib.Path(scratch), count, model_uri, backend))
    runs = []
    for count in sizes:
        seconds = float(np.median([run["seconds"] for run in measured[count]]))
        runs.append({"images": count, "backend": backend, "seconds": round(seconds, 2),
                     "all_seconds": [round(run["seconds"], 2) for run in measured[count]],
                     "images_per_second": round(count / seconds, 1),
                     "peak_rss_gib": round(max(run["peak_rss_gib"] for run in measured[count]), 2)})
    return runs


def steady_state(runs: list[dict]) -> float | None:
    """Images/s between the smallest and the largest run: the fixed cost of a run cancels out."""
    if len(runs) < 2:
        return None
    small, large = runs[0], runs[-1]
    return round((large["images"] - small["images"]) / (large["seconds"] - small["seconds"]), 1)


def ray_start_seconds() -> float:
    started = time.perf_counter()
    ensure_ray()
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("../shared/datasets/brain-tumor-mri"))
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 8000],
                        help="archive sizes; the steady state is measured between the smallest and the largest")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (the median is reported)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backends", nargs="+", default=["onnx"], choices=BACKENDS)
    args = parser.parse_args()
    if not any(args.source.rglob("*.jpg")):
        parser.error(f"no JPEG images under {args.source} (give --source a folder of JPEGs)")
    configure_logging()
    sizes = sorted(args.images)
    results = {"ray_start_seconds": ray_start_seconds(),
               "model_only_images_per_second": model_only_rates(args.model),
               "stage_ms_per_image_one_thread": stage_costs(args.source, 1000, args.model),
               "plain_loop_images_per_second": {
                   backend: round(plain_loop_rate(args.source, max(sizes), args.model, backend), 1)
                   for backend in args.backends}}
    for backend in args.backends:
        runs = screen_sizes(args.source, sizes, args.model, backend, args.repeats)
        loop = results["plain_loop_images_per_second"][backend]
        steady = steady_state(runs)
        results[backend] = {"runs": runs, "steady_state_images_per_second": steady,
                            "steady_state_vs_plain_loop": steady and round(steady / loop, 2),
                            "with_start_up_vs_plain_loop": [round(run["images_per_second"] / loop, 2) for run in runs]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
