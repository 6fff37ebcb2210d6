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

from infra.ports import free_port

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
    every few seconds when it is missing; see :func:`embedded_api_server`). Options not given come from
    ``configure_ray``. Does nothing when Ray is already up."""
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
                 dashboard_port=embedded_api_server(dashboard), configure_logging=True, logging_level=ray_level)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not verbose:  # Ray Data's execution plans and notices drown the job's own summary
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    logger.info("Ray resources: %s", ray.cluster_resources())


def embedded_api_server(dashboard: bool) -> int | None:
    """The port for an embedded Ray's dashboard, named to its workers before they start.

    A Ray process that asks the state API without an address (Ray Train's placement-group cleaner does, every few
    seconds) looks for the cluster in ``RAY_API_SERVER_ADDRESS``, then ``RAY_ADDRESS``, then the address file that
    the last ``ray start`` on this machine wrote, then a single running GCS. An embedded Ray writes no such file:
    after a ``ray start`` head has come and gone the cleaner asks that dead address and its thread dies with a
    traceback in the job's log, and beside another Ray on the machine (a second embedded job) it finds two. So the
    dashboard's port is chosen here, and ``RAY_API_SERVER_ADDRESS`` names it in this process's environment, which
    the embedded Ray's workers inherit."""
    if not dashboard:
        if os.environ.get("RAY_API_SERVER_ADDRESS") == _API_SERVER_SET.get("value"):
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        return None
    port = free_port()
    _API_SERVER_SET["value"] = os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return port


_API_SERVER_SET: dict[str, str] = {}  # the address embedded_api_server last put in the environment


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
