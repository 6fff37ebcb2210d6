"""Starting or joining Ray, and keeping its output readable: a job submitted to a cluster joins it, a plain
``python -m jobs.<name>`` starts a local one.

Without ``--verbose`` the libraries' start-up chatter is quieted, in the driver and in every worker (a cluster's
through the job's runtime environment, an embedded Ray's by inheriting the driver's environment): TensorFlow's C++
notices (``model.tensorflow_runtime``), Ray's own warnings at start-up, and Ray Data's progress notices.
Worker output forwarded to the driver carries no colour codes unless stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

import ray

logger = logging.getLogger(__name__)

# how ``ensure_ray()`` without arguments starts or joins Ray: set once by the job (``configure_ray``), so stages
# that need Ray can start it when, and only if, they have work for it
SETTINGS = {"address": None, "verbose": False, "dashboard": False}


def configure_ray(address: str | None = None, verbose: bool = False, dashboard: bool = False) -> None:
    SETTINGS.update(address=address, verbose=verbose, dashboard=dashboard)


def quiet_environment(verbose: bool) -> dict[str, str]:
    """Environment variables for the driver and the workers: quiet unless ``verbose``."""
    if verbose:
        return {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_USE_LEGACY_KERAS": "1"}
    return {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}


def ensure_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool | None = None,
               dashboard: bool | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``) when given, else start an embedded local Ray; with ``dashboard``
    the embedded Ray serves its state API on 127.0.0.1 (Ray Train's placement-group cleaner polls it, and warns
    every few seconds when it is missing). Options not given come from ``configure_ray``. Does nothing when Ray is
    already up."""
    if ray.is_initialized():
        return
    address = address or SETTINGS["address"]
    verbose = SETTINGS["verbose"] if verbose is None else verbose
    dashboard = SETTINGS["dashboard"] if dashboard is None else dashboard
    environment = quiet_environment(verbose)
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
    ray_level = logging.INFO if verbose else logging.ERROR
    if address:  # the cluster's workers get the settings through the job's runtime environment
        ray.init(address=address, runtime_env={"env_vars": environment}, log_to_driver=True, logging_level=ray_level)
    else:  # an embedded Ray's workers inherit this process's environment; a runtime environment would cost every
        # worker start about 0.7 s here (docs/benchmarks.md)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 configure_logging=True, logging_level=ray_level)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose:  # Ray Data's execution plans and notices drown the job's own summary
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    logger.info("Ray resources: %s", ray.cluster_resources())


def probe_address(address: str, timeout: float = 5.0) -> None:
    """A cluster address written host:port must accept a connection within ``timeout`` seconds: Ray itself would
    retry a dead address for minutes before giving up."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if not match:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {error}") from error


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value in quiet_environment(verbose).items():
        os.environ.setdefault(name, value)
