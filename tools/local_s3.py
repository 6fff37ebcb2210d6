"""A real S3-protocol server (moto in server mode) on a free localhost port: what the tests and the S3 benchmark
read from and write to."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

from infra.ports import free_port


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on a free localhost port, until the block ends."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
