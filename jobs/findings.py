"""Send a committed screening run's findings to a PACS, or to a folder, again: after a night whose summary counted
findings that failed (exit status 4), to another destination, or for every series rather than the flagged ones.

    python -m jobs.findings --results <dir|s3://...> [--run-id RUN] --findings-to DESTINATION [--findings-for all]

DESTINATION is a PACS's DICOMweb root, written dicomweb+https://host/dicom-web (or dicomweb+http://), or a folder or
S3 prefix that receives .dcm files. PACS credentials come from --findings-credentials-file (JSON {"username": ...,
"password": ...} or {"token": ...}), else the environment variables DICOMWEB_USERNAME and DICOMWEB_PASSWORD, or
DICOMWEB_TOKEN; never from the command line. The destination is checked first: a PACS that does not answer or
refuses the credentials stops the job within seconds (exit 2), before anything is read or sent.

Each series' report is the one jobs.screen --findings-to writes after its commit, by the same code
(``pipeline.dicomweb.delivery``): a DICOM Comprehensive SR of the deciding image's patient and study, read from that
image's header now. Its UIDs derive from the run date and the image's series, so a PACS that overwrites instances
replaces what it holds and never keeps two of one night, and a folder gets the same file names. It needs the
pseudonym key the run used (PSEUDONYM_KEY or --pseudonym-key-file): each deciding file is checked to still hold the
series it was scored in, and pseudonymised folders are found with it. Heat-map captures (--findings-heat-map) are
drawn in a Ray worker (an embedded local Ray, or --address); nothing else starts Ray.

Prints one JSON line: the run and its findings' counts (stored, failed, skipped). Exit status 0: every finding
stored; 2: nothing sent (the destination cannot be used, no such run, no key), with one line saying why; 4: some
series' findings were not stored (counted in the summary; the log says why, naming files by reference only).
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.runner import HelpFormatter, add_common_options, add_dicomweb_options, require_lasting_paths, run_job
from pipeline import schema as col
from pipeline.dicomweb.delivery import SCOPES, FindingsDelivered, FindingsOptions, deliver_findings, heat_maps_in_ray
from pipeline.dicomweb.client import DicomwebConfigError, load_credentials
from pipeline.dicomweb.destination import Destination, open_destination
from pipeline.errors import RunNotStartedError, describe_failure
from pipeline.pseudonym import load_key
from pipeline.sources.pacs import PacsOptions, is_dicomweb

logger = logging.getLogger("jobs.findings")

FINDINGS_NOT_ALL_STORED = 4  # the exit status when some series' findings were not stored


def add_findings_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The options that say where a run's findings go: jobs.screen's and this job's, spelled alike."""
    findings = parser.add_argument_group("findings back to the PACS")
    findings.add_argument("--findings-to", metavar="DESTINATION", required=required,
                          help="where each series' finding goes, as a DICOM Structured Report of its image's patient "
                               "and study: a PACS's DICOMweb root (dicomweb+https://host/dicom-web, STOW-RS), or a "
                               "folder or S3 prefix for .dcm files" + ("" if required else
                                                                       "; written after the commit (default: none)"))
    findings.add_argument("--findings-for", choices=SCOPES,
                          help=f"the series whose findings go: the flagged ones, or all with a verdict (default: "
                               f"{SCOPES[0]})")
    findings.add_argument("--findings-heat-map", action="store_true",
                          help="send with each report a Secondary Capture of the deciding slice with its heat map, "
                               "captioned as AI-generated, not a diagnosis")
    findings.add_argument("--findings-credentials-file", metavar="FILE",
                          help='JSON {"username": ..., "password": ...} or {"token": ...} for the DICOMweb '
                               "destination (default: the environment variables DICOMWEB_USERNAME and "
                               "DICOMWEB_PASSWORD, or DICOMWEB_TOKEN; none when unset)")


def check_findings_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2): a findings option without --findings-to; a relative folder in a submitted job."""
    given = [option for option, value in (("--findings-for", args.findings_for),
                                          ("--findings-heat-map", args.findings_heat_map),
                                          ("--findings-credentials-file", args.findings_credentials_file)) if value]
    if given and not args.findings_to:
        parser.error(f"{', '.join(given)} says how findings go, but --findings-to says where: give it too")
    if args.findings_to and not is_dicomweb(args.findings_to):
        require_lasting_paths(parser, args, "--findings-to")


def findings_options(args: argparse.Namespace) -> FindingsOptions | None:
    """The findings the options ask for; None without --findings-to."""
    if not args.findings_to:
        return None
    return FindingsOptions(args.findings_to, args.findings_for or SCOPES[0], args.findings_heat_map,
                           args.findings_credentials_file)


def open_findings(options: FindingsOptions | None, inputs: tuple[str, ...] = ()) -> Destination | None:
    """The checked destination of ``options`` (a ``DestinationError``, exit 2, when it cannot be used)."""
    return open_destination(options.destination, options.credentials_file, inputs) if options else None


def send_findings(output: str, run_id: str | None, options: FindingsOptions, destination: Destination,
                  key: bytes | None, pacs: PacsOptions | None) -> FindingsDelivered:
    """The run's findings written (``pipeline.dicomweb.delivery``), heat maps drawn in a Ray worker; ``pacs``: how
    the run's PACS sources are read."""
    heat_maps = heat_maps_in_ray if options.heat_map else None
    return deliver_findings(output, run_id, destination, options.scope, key, heat_maps, pacs)


def findings_after_commit(output: str, run_id: str, options: FindingsOptions | None,
                          destination: Destination | None, key: bytes | None,
                          pacs: PacsOptions | None = None) -> dict | None:
    """A screening run's findings written after its commit, as its summary line's ``findings``: the counts, or the
    error that stopped them (the run stays committed, its report written, whatever happens here); None when none
    were asked for."""
    if options is None:
        return None
    try:
        return send_findings(output, run_id, options, destination, key, pacs).summary()
    except Exception as error:  # the night's results are committed: a failure here must not read as a failed run
        logger.error("run %s is committed, but its findings could not be written (%s); resend them with `python -m "
                     "jobs.findings --results %s --run-id %s --findings-to %s`", run_id, describe_failure(error),
                     output, run_id, options.destination)
        return {"to": options.destination, "for": options.scope, "error": describe_failure(error)}


def exit_status(summary: dict) -> int:
    """``FINDINGS_NOT_ALL_STORED`` when the summary's findings counted a failure, or could not be written at all."""
    findings = summary.get("findings") or {}
    return FINDINGS_NOT_ALL_STORED if findings.get("failed") or findings.get("error") else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.findings", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--results", required=True, help="results folder or S3 prefix written by jobs.screen")
    parser.add_argument("--run-id", help="the committed run whose findings go (default: the latest)")
    parser.add_argument("--pseudonym-key-file", help="file holding the pseudonym key the run used (else PSEUDONYM_KEY)")
    add_dicomweb_options(parser.add_argument_group(
        "a run that read a PACS: how each deciding image's header is read again there"))
    add_findings_options(parser, required=True)
    add_common_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_lasting_paths(parser, args, "--results")
    check_findings_arguments(parser, args)
    return args


def prepare(args: argparse.Namespace) -> tuple[FindingsOptions, Destination, bytes | None, PacsOptions]:
    options = findings_options(args)
    try:
        sources = PacsOptions(load_credentials(args.dicomweb_credentials_file), ca_bundle=args.dicomweb_ca_bundle)
    except DicomwebConfigError as error:
        raise RunNotStartedError(f"the PACS the run read from: {error}") from None
    return options, open_findings(options), load_key(args.pseudonym_key_file), sources


def resend(args: argparse.Namespace, prepared: tuple[FindingsOptions, Destination, bytes | None, PacsOptions]) -> dict:
    delivered = send_findings(args.results, args.run_id, *prepared)
    return {col.RUN_ID: delivered.run_id, "results": args.results, "findings": delivered.summary()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_job("findings", args, prepare, lambda prepared: resend(args, prepared), lazy_ray=True,
                   exit_status=exit_status)


if __name__ == "__main__":
    sys.exit(main())
