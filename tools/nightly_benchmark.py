"""What a nightly run costs once an archive is scored (results go to docs/benchmarks.md).

    python -m tools.nightly_benchmark --source ../shared/datasets/brain-tumor-mri/Training --images 10000

Links ``--images`` real JPEGs into a scratch archive and screens it in full (night 1), adds ``--new-percent`` more
and screens again (night 2, incremental), then once more with nothing new (night 3). Each night is the real job in
its own process, so its wall time includes Python and Ray start-up, listing, the anti-join against the tables and
the commit. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from tools.benchmark import link_archive

ROOT = pathlib.Path(__file__).resolve().parents[1]


def night(archive: pathlib.Path, output: pathlib.Path, run_date: str, key_file: pathlib.Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(archive), "--output", str(output),
                           "--run-date", run_date, "--pseudonym-key-file", str(key_file), "--create-pseudonym-key"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"run_id"')))
    return {"run_date": run_date, "wall_seconds": round(wall, 1), "files_listed": summary["files_listed"],
            "files_unchanged": summary["files_unchanged"], "rows_written": summary["rows_written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=ROOT / "samples" / "labelled")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--new-percent", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(scratch)
        archive, output, key = root / "archive", root / "results", root / "pseudonym.key"
        archive.mkdir()
        link_archive(args.source, args.images, archive)
        full = night(archive, output, "2026-11-01", key)
        new = int(args.images * args.new_percent / 100)
        extra = root / "tonight"
        extra.mkdir()
        link_archive(args.source, new, extra)
        for path in extra.iterdir():
            os.rename(path, archive / f"new-{path.name}")
        incremental = night(archive, output, "2026-11-02", key)
        quiet = night(archive, output, "2026-11-03", key)
    print(json.dumps({"images": args.images, "new": new, "full": full, "incremental": incremental,
                      "nothing_new": quiet,
                      "incremental_over_full": round(incremental["wall_seconds"] / full["wall_seconds"], 3),
                      "nothing_new_over_full": round(quiet["wall_seconds"] / full["wall_seconds"], 3)}))


if __name__ == "__main__":
    main()
