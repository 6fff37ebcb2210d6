"""Starting or joining Ray: a job submitted to a cluster joins it, a plain ``python -m jobs.<name>`` starts a local one."""

from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``) when given, else start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1"}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=False,
                 configure_logging=True, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if logging.getLogger().level > logging.DEBUG:  # Ray Data's execution plans drown the job's own summary
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    logger.info("Ray resources: %s", ray.cluster_resources())


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
