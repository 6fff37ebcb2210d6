"""Finding the processes of a test's own Ray by their process titles (Ray names each worker after what it runs,
e.g. ``ray::RayTrainWorker`` or ``ray::MapWorker(MapBatches(ScoringActor))``), so a test can kill one; and real
Ray nodes started with ``ray start`` on this machine, for cluster tests."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import psutil

from infra.ports import kernel_port
from tests.conftest import ROOT


def descendants(ancestor: int) -> list[int]:
    """Live processes below ``ancestor``, by pid."""
    try:
        return sorted(child.pid for child in psutil.Process(ancestor).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def processes_titled(title: str, ancestor: int) -> list[int]:
    """Live processes below ``ancestor`` whose title (command line) contains ``title``, by pid."""
    found = []
    for pid in descendants(ancestor):
        try:
            if title in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.Error:  # the process has ended
            continue
    return found


class RayNode:
    """One real Ray node on this machine (``ray start --block`` in its own process group), head or worker. Every
    port is chosen free, since another Ray (the test session's) may hold the defaults. Each node has a temporary
    folder of its own, so its sockets, session files and logs never mix with another Ray's on the machine, and a
    head's address file (``ray_current_cluster``, which Ray processes started without an address read) does not
    outlive it in ``/tmp/ray``."""

    def __init__(self, env: dict, *arguments: str, head_address: str | None = None):
        self.env, self.arguments, self.head_address = env, arguments, head_address
        self.start()

    def start(self) -> None:
        """``ray start --block`` with fresh ports and a fresh temporary folder."""
        env, arguments, head_address = self.env, self.arguments, self.head_address
        ports = [f"--node-manager-port={kernel_port()}", f"--object-manager-port={kernel_port()}",
                 f"--dashboard-agent-listen-port={kernel_port()}", f"--dashboard-agent-grpc-port={kernel_port()}",
                 f"--runtime-env-agent-port={kernel_port()}", f"--metrics-export-port={kernel_port()}"]
        self.temp_dir = f"/tmp/rn-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths below it must fit 107 bytes
        if head_address is None:
            self.port, self.dashboard = kernel_port(), kernel_port()
            role = ["--head", f"--port={self.port}", f"--dashboard-port={self.dashboard}",
                    "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
        else:
            role = [f"--address={head_address}"]
        role.append(f"--temp-dir={self.temp_dir}")
        ray = str(pathlib.Path(sys.executable).parent / "ray")
        self.process = subprocess.Popen([ray, "start", "--block", *role, *ports, *arguments], cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def stop(self, sig=None, grace: float = 5.0) -> None:
        """``sig`` (SIGTERM) to the node's process group, then SIGKILL to what is left after ``grace`` seconds:
        a head's GCS and monitor otherwise spend about 30 s shutting down gracefully, which a test cluster that is
        thrown away does not need."""
        try:  # psutil's handles refuse to signal a pid that another process has taken since
            family = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.process.pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            for process in family:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            self.process.wait(timeout=60)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    @property
    def exited(self) -> bool:
        """Whether ``ray start --block`` has ended: one of the node's processes died (a port taken between choosing
        and binding it, say), so the node will never join."""
        return self.process.poll() is not None

    def log_tail(self, characters: int = 1500) -> str:
        """The end of the node's GCS and raylet logs, for a failure message (``ray start``'s own output is not
        kept)."""
        logs = pathlib.Path(self.temp_dir, "session_latest", "logs")
        tails = [f"--- {path.name}\n{text[-characters:]}" for path in sorted(logs.glob("*"))
                 if path.name.startswith(("gcs_server.", "raylet.")) and path.suffix in (".out", ".err")
                 and (text := path.read_text(errors="replace").strip())]
        return "\n".join(tails) or f"no GCS or raylet log under {logs}"


def wait_for_nodes(env: dict, head: RayNode, count: int, timeout: float = 120, workers: tuple = (),
                   restarts: int = 2) -> None:
    """Until the cluster of ``head`` has ``count`` live nodes (asked from a separate process). A worker of
    ``workers`` whose ``ray start`` has ended is started again with fresh ports, up to ``restarts`` times each; the
    failure message carries the logs of each worker that ended."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for node in ray.nodes() if node['Alive']))")
    deadline, left, ended = time.time() + timeout, {id(worker): restarts for worker in workers}, []
    while time.time() < deadline:
        done = subprocess.run([sys.executable, "-c", probe, head.gcs_address], env=env, capture_output=True,
                              text=True)
        if done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout.strip()) >= count:
            return
        for worker in workers:
            if worker.exited and left[id(worker)]:
                ended.append(worker.log_tail())
                left[id(worker)] -= 1
                worker.stop()
                worker.start()
        time.sleep(1)
    ended += [worker.log_tail() for worker in workers if worker.exited]
    raise AssertionError(f"the cluster at {head.gcs_address} did not reach {count} live nodes in {timeout} s; the "
                         f"last probe said:\n{done.stdout[-500:]}{done.stderr[-2500:]}\nthe head's logs:\n"
                         f"{head.log_tail()}" + "".join(f"\na worker that ended:\n{tail}" for tail in ended))
