"""Ask the screening results what happened: the morning's flagged list, a patient's history, the nights'
summaries, table history, any SQL, or a night's HTML report. Reads the Delta tables of a results output (folder
or S3 prefix) with DuckDB; starts no Ray, and runs the same under ``ray job submit``.

    python -m jobs.query flagged  --results <dir|s3://...> [--date D | --from D --to D] [--class C] ...
    python -m jobs.query patient  --results <dir|s3://...> <patient_key>
    python -m jobs.query patient  --results <dir|s3://...> --patient-id <ID|-> [--pseudonym-key-file FILE]
    python -m jobs.query summary  --results <dir|s3://...> [--from D --to D] [--by-class]
    python -m jobs.query history  --results <dir|s3://...>
    python -m jobs.query sql      --results <dir|s3://...> "SELECT ... FROM current_series ..."
    python -m jobs.query report   --results <dir|s3://...> [--run-id RUN] [--output FILE]
    python -m jobs.query path     --results <dir|s3://...> <reference> [--pseudonym-key-file FILE]
    python -m jobs.query reviews  --results <dir|s3://...> [--from D --to D] [--by all|class|date|reviewer]

Views for SQL: predictions, series, runs (complete runs only), current_predictions and current_series (each file or
series as last scored), predictions_all and series_all (every committed row). The SQL reads these and nothing else:
statements that write, attach, install or load are refused, and DuckDB may open no file (``read_csv``,
``read_text``, ``COPY``) and load no extension (``pipeline.results.views.connect_read_only``). --as-of reads every table as
it was at a moment (what was reported that morning). Output: an aligned table on a terminal, or --format csv, json
or parquet, to stdout or --output FILE. In the terminal table, control characters (escape sequences, line breaks)
are shown escaped, as \\x1b; in CSV, a text cell starting with =, +, -, @, a tab or a carriage return is prefixed
with a single quote, so no spreadsheet takes it for a formula. ``patient --patient-id`` turns a patient ID into its
pseudonym here, with the pseudonym key the screening runs used (PSEUDONYM_KEY or --pseudonym-key-file); the ID
itself is never printed, logged or written (``-`` reads it from stdin, out of the shell history). ``report``
rebuilds a committed run's morning report (``pipeline.report.morning``; default: the latest run) where the run wrote it, or
to --output, and prints where. ``reviews`` tells how far the radiologists' verdicts in the review app
(``python -m jobs.review``) agree with the model: flags confirmed, dismissed or left unsure, the share confirmed
and the classes kept or corrected, each case counted once by its latest verdict. Exit status 0 (an empty answer
included), 2 for a question that cannot be answered (no results there, unknown patient or run, bad SQL or SQL that
would write, no usable pseudonym key), with one line saying why.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import re
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from infra import storage
from jobs.runner import POSITIVE_INT, PROBABILITY, HelpFormatter, add_dicomweb_options, iso_date, require_lasting_paths
from model.labels import CLASS_NAMES
from pipeline.dicomweb.client import DicomwebConfigError, load_credentials
from pipeline.report import morning
from pipeline.results import queries, tables, views
from pipeline.pseudonym import PseudonymKeyError, load_key
from pipeline.review import verdicts
from pipeline.sources.pacs import PacsOptions

logger = logging.getLogger("jobs.query")
FORMATS = ("table", "csv", "json", "parquet")
CELL_WIDTH = 64  # longer values are shortened in the terminal table only
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
FORMULA_START = r"^([=+\-@\t\r])"


def moment(text: str) -> datetime.datetime:
    """An argparse type: an ISO date or date-time, UTC unless it names a zone."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an ISO date or time such as 2026-11-03T06:00, got {text!r}")
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.query", description=__doc__, formatter_class=HelpFormatter)
    results_option = argparse.ArgumentParser(add_help=False)
    results_option.add_argument("--results", required=True, help="results folder or S3 prefix written by jobs.screen")
    results_option.add_argument("--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False, parents=[results_option])
    common.add_argument("--format", choices=FORMATS, default="table", help="output format")
    common.add_argument("--output", help="write to this file instead of stdout (needed for parquet)")
    common.add_argument("--as-of", type=moment, help="read the tables as they were at this UTC time")
    dates = argparse.ArgumentParser(add_help=False)
    dates.add_argument("--date", type=iso_date, help="one run date (default: the latest)")
    dates.add_argument("--from", dest="first", type=iso_date, help="first run date of a range")
    dates.add_argument("--to", dest="last", type=iso_date, help="last run date of a range")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    flagged = commands.add_parser("flagged", parents=[common, dates], formatter_class=HelpFormatter,
                                  help="flagged series and images, most suspicious first")
    flagged.add_argument("--class", dest="predicted_class", choices=CLASS_NAMES, help="only this predicted class")
    flagged.add_argument("--threshold", type=PROBABILITY,
                         help="tumor probability to list from (default: what each run flagged)")
    flagged.add_argument("--modality", help="only this DICOM modality, e.g. MR")
    flagged.add_argument("--limit", type=POSITIVE_INT, help="at most this many rows")
    add_patient_parser(commands, common)
    path = commands.add_parser("path", parents=[common], formatter_class=HelpFormatter,
                               help="the path of a file the report names by its reference (f-... or r-...)")
    path.add_argument("reference", help="the reference the report shows beside the file name")
    path.add_argument("--pseudonym-key-file", help="file holding the pseudonym key (else PSEUDONYM_KEY)")
    summary = commands.add_parser("summary", parents=[common, dates], formatter_class=HelpFormatter,
                                  help="per night: files, rows, scored, flagged, errors, throughput, model")
    summary.add_argument("--by-class", action="store_true", help="images per predicted class per night instead")
    commands.add_parser("history", parents=[common], formatter_class=HelpFormatter,
                        help="every table commit with its time and run (time travel, audit)")
    sql = commands.add_parser("sql", parents=[common], formatter_class=HelpFormatter, help="any SQL (DuckDB)")
    sql.add_argument("query", help="the SQL, over the views listed above")
    agreement = commands.add_parser("reviews", parents=[common, dates], formatter_class=HelpFormatter,
                                    help="agreement between the model and the reviewers' verdicts")
    agreement.add_argument("--by", choices=sorted(queries.REVIEW_GROUPS), default="all",
                           help="group by the model's class, the run date or the reviewer, or not at all")
    rebuilt = commands.add_parser("report", parents=[results_option], formatter_class=HelpFormatter,
                                  help="rebuild a committed run's HTML morning report")
    rebuilt.add_argument("--run-id", help="the run to report on; omitted: the latest committed run")
    rebuilt.add_argument("--output", help="file or S3 URI to write the report to; omitted: where the run wrote it, "
                                          "<results>/reports/<run_date>/<run_id>.html")
    add_dicomweb_options(rebuilt.add_argument_group("a run that read a PACS: how its slices are retrieved again"))
    return parser


def add_patient_parser(commands, common: argparse.ArgumentParser) -> None:
    patient = commands.add_parser("patient", parents=[common], formatter_class=HelpFormatter,
                                  help="one patient's series across studies and nights")
    patient.add_argument("patient_key", nargs="?", help="the pseudonymous patient key from the results tables")
    patient.add_argument("--patient-id", help="the patient ID as the archive knows it, instead of a key: turned into "
                                              "its key here with the pseudonym key, never printed; - reads stdin")
    patient.add_argument("--pseudonym-key-file",
                         help="file holding the pseudonym key the screening runs used (else PSEUDONYM_KEY)")


def date_range(args: argparse.Namespace) -> queries.DateRange:
    if args.date:
        return queries.DateRange(args.date, args.date)
    return queries.DateRange(args.first, args.last)


def answer(args: argparse.Namespace) -> pa.Table:
    if args.command == "history":
        return pa.Table.from_pylist(tables.history(args.results))
    connection = views.connect_read_only(args.results, args.as_of)
    if args.command == "flagged":
        return queries.flagged(connection, queries.FlaggedFilter(
            date_range(args), args.predicted_class, args.threshold, args.modality, args.limit))
    if args.command == "patient" and args.patient_id:
        return queries.patient_by_id(connection, patient_id(args.patient_id), load_key(args.pseudonym_key_file))
    if args.command == "patient":
        return queries.patient(connection, args.patient_key)
    if args.command == "path":
        return queries.file_by_reference(connection, args.reference, load_key(args.pseudonym_key_file))
    if args.command == "summary":
        return queries.summary(connection, date_range(args), args.by_class)
    if args.command == "reviews":
        return queries.reviews(connection, verdicts.dataset(args.results, args.as_of), date_range(args), args.by)
    return queries.sql(connection, args.query)


def patient_id(given: str) -> str:
    """The ID as given, or read from stdin for ``-`` (so it stays out of the shell history and the process list)."""
    return sys.stdin.readline().strip() if given == "-" else given


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escapes, line breaks, the C1 set) and invisible direction overrides
    escaped as \\xNN or \\uNNNN: a file name cannot move the cursor, recolour the terminal or break a row."""
    return UNPRINTABLE.sub(lambda found: found[0].encode("unicode_escape").decode("ascii"), text)


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    text = printable(json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    return text if len(text) <= CELL_WIDTH else "..." + text[-(CELL_WIDTH - 3):]


def aligned(table: pa.Table) -> str:
    """A table as aligned text columns, numbers to the right; '(no rows)' under the header when empty."""
    header = [printable(name) for name in table.column_names]
    rows = [[cell(value) for value in row.values()] for row in table.to_pylist()]
    widths = [max([len(name), *(len(row[index]) for row in rows)]) for index, name in enumerate(header)]
    numeric = [pa.types.is_integer(field.type) or pa.types.is_floating(field.type) for field in table.schema]

    def line(values):
        return "  ".join(value.rjust(width) if right else value.ljust(width)
                         for value, width, right in zip(values, widths, numeric)).rstrip()

    lines = [line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)]
    return "\n".join(lines if rows else [*lines, "(no rows)"]) + "\n"


def render(table: pa.Table, kind: str) -> bytes:
    if kind == "table":
        return aligned(table).encode()
    buffer = io.BytesIO()
    if kind == "csv":
        pacsv.write_csv(without_formulas(table), buffer)
    elif kind == "json":
        buffer.write(json.dumps(table.to_pylist(), default=str, indent=1).encode() + b"\n")
    else:
        pq.write_table(table, buffer)
    return buffer.getvalue()


def without_formulas(table: pa.Table) -> pa.Table:
    """``table`` with each text cell a spreadsheet would take for a formula (one starting with =, +, -, @, a tab or
    a carriage return) prefixed with a single quote, so a file name cannot become a live formula in a CSV."""
    columns = []
    for column in table.columns:
        if pa.types.is_string_view(column.type):
            column = column.cast(pa.string())
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.replace_substring_regex(column, FORMULA_START, r"'\1", max_replacements=1)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if getattr(args, "format", None) == "parquet" and not args.output:
        parser.error("--format parquet needs --output FILE")
    if args.command == "patient" and (args.patient_key is None) == (args.patient_id is None):
        parser.error("patient: give either a patient key or --patient-id")  # never echo the ID
    first, last = getattr(args, "first", None), getattr(args, "last", None)
    if first and last and first > last:
        parser.error(f"--from {first} is after --to {last}: give the earlier date first")
    if getattr(args, "date", None) and (first or last):
        parser.error("give --date for one night or --from/--to for a range, not both")
    require_lasting_paths(parser, args, "--results", "--output")


def require_results(output: str, as_of: datetime.datetime | None = None) -> None:
    """A results output, which held results already at ``as_of`` when one is given."""
    if not tables.is_delta(output, tables.RUNS):
        tables.check_layout(output)
        raise queries.QueryError(f"{output} holds no screening results (no runs table): give the --output folder "
                                 f"of jobs.screen")
    if as_of is not None and tables.open_table(output, tables.RUNS, as_of) is None:
        first = tables.committed_at(output, tables.RUNS, 0)
        since = f": its first run was committed at {first:%Y-%m-%d %H:%M:%S} UTC" if first else ""
        raise queries.QueryError(f"{output} held no screening results at {as_of.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, before "
                                 f"its first run{since}; nothing was there to read then")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        require_results(args.results, getattr(args, "as_of", None))
        if args.command == "report":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "3")  # TensorFlow's notices
            pacs = PacsOptions(load_credentials(args.dicomweb_credentials_file), ca_bundle=args.dicomweb_ca_bundle)
            sys.stdout.write(morning.write_report(args.results, args.run_id, args.output, pacs=pacs) + "\n")
            return 0
        data = render(answer(args), args.format)
    except (queries.QueryError, morning.ReportError, storage.StorageError, PseudonymKeyError,
            DicomwebConfigError) as error:
        print(f"jobs.query {args.command}: {printable(str(error))}", file=sys.stderr)
        return 2
    if args.output:
        storage.write_bytes(args.output, data)
    else:
        sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
