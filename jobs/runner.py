"""The one shape of every job's ``main``: parse, log, join Ray, run, and turn the outcome into an exit status.

Exit status 0: the run finished (and, for screening, committed); its summary is printed as one JSON line on stdout.
2: it could not start and wrote nothing (the error names what to fix). 3: it failed part-way and committed nothing.
Arguments are parsed before anything heavy is imported or started, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import textwrap
from collections.abc import Callable
from typing import Any

from infra import storage
from infra.ray_runtime import configure_logging, configure_ray, ensure_ray
from model.data import DatasetError
from model.registry import ModelError
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from pipeline.pseudonym import PseudonymKeyError

NOT_STARTED = (RunNotStartedError, DatasetError, ModelError, PseudonymKeyError, storage.StorageError)


SUBMITTED_JOB_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a `ray job submit` entrypoint


def submitted_job() -> bool:
    """Whether this process is the entrypoint of a job submitted with ``ray job submit``."""
    return bool(os.environ.get(SUBMITTED_JOB_VARIABLE))


def require_lasting_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, *options: str) -> None:
    """In a submitted job the working directory is Ray's temporary copy of ``--working-dir``, deleted with the
    job: a relative path to write (results, a key) would vanish, so it is a usage error (exit 2) there."""
    if not submitted_job():
        return
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if value and not storage.is_s3(value) and not os.path.isabs(value):
            parser.error(f"{option} {value} is a relative path: in a job submitted with `ray job submit` it would "
                         f"point into Ray's temporary copy of the working directory, deleted with the job; give an "
                         f"absolute path on the nodes or an s3:// URI")


def add_dicomweb_options(group) -> None:
    """How a job reaches a PACS input (``dicomweb+https://...``): its credentials and the CA its certificate is
    verified against."""
    group.add_argument("--dicomweb-credentials-file", metavar="FILE",
                       help='JSON {"username": ..., "password": ...} or {"token": ...} for the PACS (default: the '
                            "environment variables DICOMWEB_USERNAME and DICOMWEB_PASSWORD, or DICOMWEB_TOKEN; none "
                            "when unset)")
    group.add_argument("--dicomweb-ca-bundle", metavar="FILE",
                       help="verify the PACS's TLS certificate against this CA bundle (default: the system's CAs; "
                            "verification is never off)")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local embedded Ray)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_job(name: str, args: argparse.Namespace, prepare: Callable[[argparse.Namespace], Any],
            execute: Callable[[Any], dict], dashboard: bool = False, lazy_ray: bool = False,
            exit_status: Callable[[dict], int] = lambda summary: 0) -> int:
    """``prepare(args)`` checks everything it can without Ray (inputs, model, key, output) and returns a plan;
    then Ray starts (or is joined; ``dashboard`` for jobs that run Ray Train) and ``execute(plan)`` runs it. With
    ``lazy_ray`` Ray starts only when ``execute`` first needs it (``infra.ray_runtime.ensure_ray()``): a nightly run
    with nothing new costs no Ray start. The summary dict is printed as one JSON line; the exit status is
    returned: ``exit_status(summary)`` when the run finished (0 unless the job says otherwise)."""
    configure_logging(args.verbose)
    logger = logging.getLogger(f"jobs.{name}")
    try:
        plan = prepare(args)
        configure_ray(args.address, verbose=args.verbose, dashboard=dashboard)
        if not lazy_ray:
            ensure_ray()
        summary = execute(plan)
    except NOT_STARTED as error:
        logger.error("%s not started: %s", name, error)
        return 2
    except RunFailedError as error:
        logger.error("%s", error, exc_info=error.__cause__)
        return 3
    except Exception as error:  # an unexpected failure still ends with the documented status and one line
        logger.error("%s failed: %s", name, describe_failure(error), exc_info=error)
        return 3
    print(json.dumps(summary, default=str))
    return exit_status(summary)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and after each option's help its default, once, as the parser holds it
    (``shown_default``). Lines break at spaces only, so a path or a hyphenated word stays whole."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, argparse.BooleanOptionalAction):
            text = text.replace(BOOLEAN_DEFAULT_SUFFIX, "")  # Python's own "(default: True)" of such a pair
        default = shown_default(action)
        return text if default is None or "(default" in text else f"{text} (default: {escaped(default)})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


BOOLEAN_DEFAULT_SUFFIX = " (default: %(default)s)"


def shown_default(action: argparse.Action) -> str | None:
    """The default ``--help`` prints for ``action``, or None where a printed value would say nothing or mislead: a
    required option, a flag (``--no-report``'s stored True is not what the flag does), an option that is unset
    (None: its help says what happens then) or an empty list. A ``--x/--no-x`` pair shows the form in effect."""
    default = action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        if default is None or default is argparse.SUPPRESS:
            return None
        return action.option_strings[0] if default else action.option_strings[-1]
    if action.required or action.nargs == 0 or default is None or default is argparse.SUPPRESS:
        return None
    if isinstance(default, (list, tuple)) and not default:
        return None
    return str(default)


def escaped(text: str) -> str:
    """``text`` as literal help text (argparse expands ``%`` in help)."""
    return text.replace("%", "%%")


def bounded(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, what: str = "") -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number within [low, high] (or open ends), else a message saying what is allowed."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            right = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"must be {' and '.join(filter(None, (left, right)))}{what}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = bounded(int, 1)
POSITIVE_NUMBER = bounded(float, 0, low_open=True)
PROBABILITY = bounded(float, 0, 1, what=" (a probability)")


def iso_date(text: str) -> str:
    """An argparse type: a calendar date written YYYY-MM-DD."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be a date written YYYY-MM-DD, e.g. 2026-11-24, got {text!r}")
