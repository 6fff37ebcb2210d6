"""Ports for the local servers the tests and tools start (moto, Orthanc, the review app, an embedded Ray's
dashboard: ``infra.ray_runtime``; ``ray start`` nodes: see :func:`kernel_port`).

A port the kernel hands out for ``bind(("", 0))`` comes from its ephemeral range, the range every outgoing connection
also draws its local port from. Between choosing such a port and the server binding it (Ray takes many seconds to
start), another process's connection can take it: with two test processes side by side, each starting Ray clusters,
that happened to the review app. So :func:`free_port` draws a port at random from below the ephemeral range and
above Ray's worker ports (10002-19999 by default), checked free, and never handed out twice by one process.
"""

from __future__ import annotations

import pathlib
import random
import socket

RAY_WORKER_PORTS_END = 20000
EPHEMERAL_RANGE = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()
_draw = random.SystemRandom()


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def kernel_port() -> int:
    """A free port as the kernel hands it out (its ephemeral range). What the ``ray start`` nodes of the tests use:
    with ports from :func:`free_port` their head's GCS twice never answered in CI (cause not found), while with
    these the same tests passed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port() -> int:
    """A port nothing listens on, outside the kernel's ephemeral range and Ray's worker ports."""
    end = ephemeral_start()
    if end - RAY_WORKER_PORTS_END >= 1000:
        for _ in range(200):
            port = _draw.randrange(RAY_WORKER_PORTS_END, end)
            if port not in _given and is_free(port):
                _given.add(port)
                return port
    port = kernel_port()  # a narrowed ephemeral range: the kernel's choice is all there is
    _given.add(port)
    return port
