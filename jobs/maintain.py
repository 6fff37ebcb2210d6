"""Maintain a results output: compact and vacuum its Delta tables, finish an interrupted commit, convert an output
of the earlier Parquet layout, check that its tables are whole, or bring a damaged table back to a good version.
Each command holds the output's lock (never while a screening run writes).

    python -m jobs.maintain optimize --results <dir|s3://...> [--retain-days 30]   # weekly, after a night's run
    python -m jobs.maintain recover  --results <dir|s3://...>                      # after a run failed mid-commit
    python -m jobs.maintain migrate  --results <dir|s3://...>                      # once, for an old output
    python -m jobs.maintain verify   --results <dir|s3://...>                      # are the tables whole?
    python -m jobs.maintain restore  --results <dir|s3://...> --table T --version N  # the way back verify names

``optimize`` first finishes a commit a run left half done (as ``recover``), then rewrites each table's small files
into large ones and deletes files no version younger than --retain-days needs: time travel (``jobs.query --as-of``)
reaches back that far. ``verify`` checks every table: its log parses, every data file it names exists with its
recorded size, and predictions and series agree with runs; it prints each problem as one sentence naming the
table, the cause and the way back (usually the ``restore`` command with the last good version). ``restore`` brings
one table back to that version (``pipeline.results.maintenance``). ``optimize`` and ``recover`` refuse a damaged table.
Exit status 0 when done (``verify`` and ``restore``: the output is whole), 1 when ``verify`` finds a problem
(after ``restore`` too: the table is back, but e.g. ``runs`` still records a night the restored table no longer
holds), 2 when the output is busy, missing, damaged or not a results output, with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid

from infra import storage
from jobs.runner import POSITIVE_NUMBER, HelpFormatter, bounded, require_lasting_paths
from pipeline.results import maintenance, run_lock, tables

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
    commands.add_parser("verify", parents=[common], formatter_class=HelpFormatter,
                        help="check every table: its log parses, its data files exist, it agrees with runs")
    restore = commands.add_parser("restore", parents=[common], formatter_class=HelpFormatter,
                                  help="bring one table back to an earlier version (the one verify names)")
    restore.add_argument("--table", required=True, choices=tables.TABLES, help="the table to restore")
    restore.add_argument("--version", required=True, type=bounded(int, 0), help="the table version to go back to")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.command == "migrate":
        if not storage.is_dir(storage.join(args.results, tables.RUNS)):
            raise tables.ResultsError(f"{args.results} holds no runs table: nothing to migrate")
    elif not tables.is_delta(args.results, tables.RUNS):
        tables.check_layout(args.results)
        raise tables.ResultsError(f"{args.results} holds no screening results (no runs table)")
    with run_lock.RunLock(args.results, f"maintenance-{uuid.uuid4().hex[:8]}"):
        if args.command == "migrate":
            return {"migrated_rows": maintenance.migrate(args.results)}
        if args.command == "verify":
            return {"problems": maintenance.verify(args.results)}
        if args.command == "restore":
            return {**maintenance.restore(args.results, args.table, args.version),
                    "problems": maintenance.verify(args.results)}
        refuse_damaged(args.results)
        if args.command == "recover":
            return {"recovered_runs": tables.recover(args.results)}
        # a run left between its commits is finished first: compaction must not settle its partial commit
        return {"recovered_runs": tables.recover(args.results), "compacted": maintenance.compact(args.results),
                "vacuumed_files": maintenance.vacuum(args.results, args.retain_days)}


def refuse_damaged(output: str) -> None:
    """ResultsError with the first problem of a damaged table: compaction, vacuum and commits must not build on it."""
    problems = [problem for table in tables.TABLES for problem in maintenance.table_problems(output, table)]
    if problems:
        raise tables.ResultsError(f"{problems[0]} (`python -m jobs.maintain verify --results {output}` lists every "
                                   f"problem)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_lasting_paths(parser, args, "--results")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (storage.StorageError, tables.CommitError) as error:
        logger.error("%s not done: %s", args.command, error)
        return 2
    for problem in summary.get("problems", []):
        logger.error("%s", problem)
    print(json.dumps({"command": args.command, "results": args.results, **summary}, default=str))
    return 1 if summary.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
