"""Serve the radiologist's review app: the worklist of a night's flagged series and images (most suspicious first,
with their review states and the unfamiliar inputs apart), each case's page (its slices in order, the deciding
slice with its heat map, the class probabilities, the model and its operating point), verdicts by keyboard (j/k
next and previous, c confirm, d dismiss, u unsure, 1-4 the type, r reopen) appended to the ``reviews`` Delta table
beside the results tables, and on-demand scoring of an uploaded DICOM, JPEG, PNG or zip of one series, scored as
the nightly job scores it and stored nowhere.

    python -m jobs.review --results <dir|s3://...> [--port 8000] [--host 127.0.0.1] [--reviewer NAME]
    python -m jobs.review --results <dir|s3://...> --host 0.0.0.0 --token-file /etc/mri-screen/review.token

Runs on Ray Serve (``pipeline.review.serving``): embedded, this starts a local Ray; with --address or RAY_ADDRESS
it joins a cluster. It listens on 127.0.0.1 unless --host says otherwise, and any other address needs
--token-file: every request must then carry ``Authorization: Bearer <token>`` (else 401). Stop it with Ctrl-C or
SIGTERM; it then prints one JSON line (where it listened, the verdicts recorded). Exit status 2 when it cannot start
(no results there, no model, an unusable token or key file, the port taken).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import socket
import sys
import threading

from jobs.runner import POSITIVE_INT, POSITIVE_NUMBER, HelpFormatter, add_common_options, bounded, run_job
from model import registry
from model.registry import DEFAULT_MODEL
from pipeline.results import tables
from pipeline.errors import RunNotStartedError
from pipeline.review.access import is_loopback, read_token

logger = logging.getLogger("jobs.review")
PORT = bounded(int, 1, 65535, what=" (a TCP port)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.review", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--results", required=True, help="results folder or S3 prefix written by jobs.screen")
    parser.add_argument("--port", type=PORT, default=8000, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but a loopback address needs --token-file")
    parser.add_argument("--reviewer", help="the name verdicts are recorded under (default: the login name)")
    parser.add_argument("--token-file", help="file holding the bearer token every request must carry (at least "
                                             "16 characters; required off loopback)")
    parser.add_argument("--pseudonym-key-file",
                        help="the screening runs' pseudonym key (else PSEUDONYM_KEY): stable file references, and "
                             "pseudonymised folders found again")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model or registry folder for on-demand scoring")
    parser.add_argument("--max-upload-mb", type=POSITIVE_NUMBER, default=64.0, help="largest upload accepted (MB)")
    parser.add_argument("--scoring-threads", type=POSITIVE_INT, default=1, help="CPU threads per scoring replica")
    parser.add_argument("--max-replicas", type=POSITIVE_INT, default=2,
                        help="scoring replicas Serve may scale up to under load (one at least always runs)")
    add_common_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.token_file:
        parser.error(f"--host {args.host} is not a loopback address: give --token-file, so that only holders of "
                     f"the token are answered")
    return args


def prepare(args: argparse.Namespace):
    """Everything that can stop the app before Ray starts: results there, the model, the token and key, the port."""
    from pipeline.pseudonym import load_key
    from pipeline.review.serving import ReviewSettings

    if not tables.is_delta(args.results, tables.RUNS):
        raise RunNotStartedError(f"{args.results} holds no screening results (no runs table): give the --output "
                                 f"folder of jobs.screen")
    tables.check_layout(args.results)
    registry.load_model_info(args.model)
    load_key(args.pseudonym_key_file)
    if args.token_file:
        try:
            read_token(args.token_file)
        except (OSError, ValueError) as error:
            raise RunNotStartedError(f"--token-file: {error}") from None
    require_free_port(args.host, args.port)
    return ReviewSettings(results=args.results, model=args.model, reviewer=args.reviewer or getpass.getuser(),
                          token_file=args.token_file, pseudonym_key_file=args.pseudonym_key_file,
                          max_upload_mb=args.max_upload_mb, scoring_threads=args.scoring_threads,
                          max_replicas=args.max_replicas), args.host, args.port


def require_free_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RunNotStartedError(f"cannot listen on {host}:{port} ({error.strerror})") from None


def serve_until_stopped(plan) -> dict:
    """Start the app on Ray Serve, wait for Ctrl-C or SIGTERM, stop it; the summary line."""
    from ray import serve

    from pipeline.review.serving import review_app
    from pipeline.review.verdicts import VerdictLog

    settings, host, port = plan
    stopped = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stopped.set())
    before = VerdictLog(settings.results).rows().num_rows
    serve.start(http_options={"host": host, "port": port})
    serve.run(review_app(settings), name="review", route_prefix="/")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    logger.info("review app listening on %s (reviewer %s, %s); Ctrl-C stops it", url, settings.reviewer,
                "bearer token required" if settings.token_file else "loopback only")
    stopped.wait()
    logger.info("stopping the review app")
    serve.shutdown()
    return {"url": url, "reviewer": settings.reviewer,
            "verdicts_recorded": VerdictLog(settings.results).rows().num_rows - before}


def main(argv: list[str] | None = None) -> int:
    return run_job("review", parse_args(argv), prepare, serve_until_stopped)


if __name__ == "__main__":
    sys.exit(main())
