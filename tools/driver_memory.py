"""Where the screening driver's memory goes: one run of the real job in this process, with the driver's resident
(RSS) and unique (USS) memory read after each stage, and its peak RSS sampled every 0.1 s.

    python -m tools.driver_memory --input ARCHIVE --output OUT --pseudonym-key-file KEY
    python -m tools.driver_memory --input ARCHIVE --output OUT --listing-only

``--listing-only`` stops after the selection (listing, comparison with the results tables) and the hand-over of
the chosen files to Ray's object store: the part of a night that touches every file of the archive, however few
changed, measured without scoring. Each line printed is JSON.
The figures are in docs/benchmarks.md ("Driver memory").
"""

from __future__ import annotations

import argparse
import functools
import json
import threading
import time

import psutil
import ray

from infra.ray_runtime import ensure_ray
from pipeline import results
from pipeline import screen as screening


class PeakSampler(threading.Thread):
    """The process's peak RSS, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.process, self.every, self.peak, self.running = psutil.Process(), every, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)


def mib(value: int) -> float:
    return round(value / 2**20, 1)


class Probe:
    """Wraps stage functions so that each call prints the driver's memory when it returns."""

    def __init__(self, sampler: PeakSampler):
        self.sampler, self.started = sampler, time.perf_counter()

    def report(self, stage: str, **extra) -> None:
        memory = psutil.Process().memory_full_info()
        print(json.dumps({"stage": stage, "seconds": round(time.perf_counter() - self.started, 1),
                          "rss_mib": mib(memory.rss), "uss_mib": mib(memory.uss),
                          "peak_rss_mib": mib(max(self.sampler.peak, memory.rss)), **extra}), flush=True)

    def wrap(self, owner, name: str) -> None:
        function = getattr(owner, name)

        @functools.wraps(function)
        def probed(*args, **kwargs):
            value = function(*args, **kwargs)
            self.report(name)
            return value
        setattr(owner, name, probed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--pseudonym-key-file")
    parser.add_argument("--listing-only", action="store_true", help="stop after the selection")
    args = parser.parse_args()
    sampler = PeakSampler()
    sampler.start()
    probe = Probe(sampler)
    probe.report("imports")
    config = screening.ScreenConfig(inputs=(args.input,), output=args.output, pseudonym_key_file=args.pseudonym_key_file,
                                    create_pseudonym_key=args.pseudonym_key_file is not None)
    plan = screening.prepare(config)
    probe.report("listing", files=plan.listing.entries)
    if args.listing_only:
        with plan.workspace:
            connection = screening.views.connect(args.output)
            connection.register("listing", plan.listing.dataset())
            selection = screening.select_files(
                config, connection, "listing", screening.views.scored_files("1970-01-01"), plan.model.weights_sha256,
                f"{plan.workspace.name}/verdicts.parquet")
            probe.report("select_files", to_score=selection.files)
            ensure_ray()
            probe.report("ray started")
            refs = [ray.put(block) for block in selection.blocks(config.decode_batch_size)]
            probe.report("blocks put in the object store", blocks=len(refs))
    else:
        for name in ("select_files", "predictions_dataset", "stage_predictions", "write_series", "count_outcomes"):
            probe.wrap(screening, name)
        probe.wrap(results, "commit_run")
        record = screening.score_and_commit(plan)
        probe.report("end", rows=record.rows_written, series=record.series)
    sampler.running = False


if __name__ == "__main__":
    main()
