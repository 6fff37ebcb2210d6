"""Maintain a results output: compact and vacuum its Delta tables, finish an interrupted commit, or convert an
output of the earlier Parquet layout. Each command holds the output's lock (never while a screening run writes).

    python -m jobs.maintain optimize --results <dir|s3://...> [--retain-days 30]   # weekly, after a night's run
    python -m jobs.maintain recover  --results <dir|s3://...>                      # after a run failed mid-commit
    python -m jobs.maintain migrate  --results <dir|s3://...>                      # once, for an old output

``optimize`` rewrites each table's small files into large ones and then deletes files no version younger than
--retain-days needs: time travel (``jobs.query --as-of``) reaches back that far. Exit status 0 when done, 2 when
the output is busy, missing or not a results output, with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid

from infra import storage
from jobs.runner import POSITIVE_NUMBER, HelpFormatter, require_lasting_paths
from pipeline import maintenance, results, run_lock

logger = logging.getLogger("jobs.maintain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.maintain", description=__doc__,
                                     formatter_class=HelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", required=True, help="results folder or S3 prefix written by jobs.screen")
    common.add_argument("--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    optimize = commands.add_parser("optimize", parents=[common], formatter_class=HelpFormatter,
                                   help="compact small files, then vacuum files older than the retention")
    optimize.add_argument("--retain-days", type=POSITIVE_NUMBER, default=30.0,
                          help="keep every file a table version of the last this many days needs")
    commands.add_parser("recover", parents=[common], formatter_class=HelpFormatter,
                        help="finish the commit of a run that died after its work was complete")
    commands.add_parser("migrate", parents=[common], formatter_class=HelpFormatter,
                        help="convert an output of the earlier Parquet layout to Delta tables, once")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.command == "migrate":
        if not storage.is_dir(storage.join(args.results, results.RUNS)):
            raise results.ResultsError(f"{args.results} holds no runs table: nothing to migrate")
    elif not results.is_delta(args.results, results.RUNS):
        results.check_layout(args.results)
        raise results.ResultsError(f"{args.results} holds no screening results (no runs table)")
    with run_lock.RunLock(args.results, f"maintenance-{uuid.uuid4().hex[:8]}"):
        if args.command == "migrate":
            return {"migrated_rows": maintenance.migrate(args.results)}
        if args.command == "recover":
            return {"recovered_runs": results.recover(args.results)}
        return {"compacted": maintenance.compact(args.results),
                "vacuumed_files": maintenance.vacuum(args.results, args.retain_days)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_lasting_paths(parser, args, "--results")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (storage.StorageError, results.CommitError) as error:
        logger.error("%s not done: %s", args.command, error)
        return 2
    print(json.dumps({"command": args.command, "results": args.results, **summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
