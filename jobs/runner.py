"""The one shape of every job's ``main``: parse, log, join Ray, run, and turn the outcome into an exit status.

Exit status 0: the run finished (and, for screening, committed); its summary is printed as one JSON line on stdout.
2: it could not start and wrote nothing (the error names what to fix). 3: it failed part-way and committed nothing.
Arguments are parsed before anything heavy is imported or started, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable

from infra import storage
from infra.ray_runtime import configure_logging, ensure_ray
from model.data import DatasetError
from model.registry import ModelError
from pipeline.errors import RunFailedError, RunNotStartedError, describe_failure
from pipeline.pseudonym import PseudonymKeyError

NOT_STARTED = (RunNotStartedError, DatasetError, ModelError, PseudonymKeyError, storage.StorageError)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local embedded Ray)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run_job(name: str, args: argparse.Namespace, execute: Callable[[argparse.Namespace], dict]) -> int:
    """Run ``execute(args)`` on Ray; print its summary dict as one JSON line; return the exit status."""
    configure_logging(args.verbose)
    logger = logging.getLogger(f"jobs.{name}")
    try:
        ensure_ray(args.address)
        summary = execute(args)
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
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default after its help."""
