"""One writer per results output: a lock file, ``<output>/_work/lock.json``, held while a run writes.

It names the run, the host and the process, and is rewritten every ``HEARTBEAT_SECONDS``. A lock is live while its
holder's heartbeat is younger than ``STALE_SECONDS`` and, on the same host, its process still runs; a run that
finds a live lock stops before writing anything, with a sentence naming the holder. A lock left by a run that died
is taken over. Writing the lock is a check-then-write, not an atomic create on S3: two runs started within the same
second could both take it, and then Delta's optimistic concurrency rejects the second's conflicting commit.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time

from infra import storage
from pipeline.results.tables import WORK

logger = logging.getLogger(__name__)

LOCK = "lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
SETTLE_SECONDS = 0.5  # the lock is read back after this long, so the later of two racing writers sees the other


class OutputBusyError(storage.StorageError):
    """Another live run holds the output's lock."""


def lock_uri(output: str) -> str:
    return storage.join(output, WORK, LOCK)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(output: str) -> dict | None:
    uri = lock_uri(output)
    try:
        return json.loads(storage.read_text(uri))
    except storage.StorageError:
        if not storage.exists(uri):
            return None
        raise  # a lock that is there but cannot be read: never taken for a free output
    except ValueError:
        return {}  # a lock cut short while being written: its writer died


def is_live(holder: dict, now: float | None = None) -> bool:
    if not holder:
        return False
    age = (now or time.time()) - float(holder.get("heartbeat", 0))
    if age > STALE_SECONDS:
        return False
    if holder.get("host") == socket.gethostname():
        return process_alive(int(holder.get("pid", 0)))
    return True


def describe(holder: dict) -> str:
    beat = datetime.datetime.fromtimestamp(float(holder.get("heartbeat", 0)), datetime.timezone.utc)
    return (f"run {holder.get('run_id')} (process {holder.get('pid')} on {holder.get('host')}, last heartbeat "
            f"{beat:%Y-%m-%d %H:%M:%S} UTC)")


def check_free(output: str) -> None:
    """Raise OutputBusyError when a live run holds the output."""
    holder = read_lock(output)
    if holder and is_live(holder):
        raise OutputBusyError(
            f"{output} is being written by {describe(holder)}; one run writes an output at a time: wait for it to "
            f"finish (a lock left by a run that died on another machine expires {STALE_SECONDS / 60:.0f} minutes "
            f"after its last heartbeat)")


class RunLock:
    """Held for a run's whole write: ``with RunLock(output, run_id):``."""

    def __init__(self, output: str, run_id: str):
        self.output, self.run_id = output, run_id
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def record(self) -> dict:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def __enter__(self) -> "RunLock":
        check_free(self.output)
        storage.write_text(lock_uri(self.output), json.dumps(self.record()))
        time.sleep(SETTLE_SECONDS)
        holder = read_lock(self.output) or {}
        if holder.get("run_id") != self.run_id:
            raise OutputBusyError(f"{self.output} was taken by {describe(holder)} at the same moment; try again "
                                  f"when it has finished")
        self.thread = threading.Thread(target=self.beat, name="results-lock-heartbeat", daemon=True)
        self.thread.start()
        return self

    def beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                storage.write_text(lock_uri(self.output), json.dumps(self.record()))
            except storage.StorageError as error:
                logger.warning("could not renew the lock on %s: %s", self.output, error)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        try:
            if (read_lock(self.output) or {}).get("run_id") == self.run_id:
                storage.delete_file(lock_uri(self.output))
            work = storage.join(self.output, WORK)
            if not storage.list_files(work):
                storage.delete_tree(work)
        except storage.StorageError as error:
            logger.warning("could not release the lock on %s (it expires by itself): %s", self.output, error)
