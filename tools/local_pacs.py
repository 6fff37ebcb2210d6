"""A real PACS on localhost, for the DICOMweb tests and for trying the PACS path by hand: Orthanc with its DICOMweb
plugin, on free HTTP and DICOM ports,
with storage and index in a folder of its own, HTTP basic auth for one test user, and ``OverwriteInstances`` on (a
stored instance with a known SOP Instance UID replaces the one there, as the screening reports rely on).

``OrthancServer`` is a controller: ``start`` (returns once ``/system`` answers), ``kill`` (at once, like a crash),
``stop`` (SIGTERM; Orthanc takes over 4 s to stop, so by default it is left to finish in a reaper thread, killed if
it outlives ``STOP_BOUND_S``), ``restart`` (same ports, same storage). ``join_reapers`` waits for every stopping
server at once, so a session with several servers waits about 5 s in all, not 5 s each. The tests' fixtures
(``tests/conftest.py``) share one server per session and give fault tests a fresh one of their own.
``orthanc_missing`` says why Orthanc cannot run here (the Debian packages ``orthanc`` and ``orthanc-dicomweb``
provide it), else None.

By hand (the README's "Straight from a PACS"): a PACS holding the sample archive, until Ctrl-C::

    python -m tools.local_pacs --upload samples/archive/dicom --credentials out/local-pacs.json

It prints the DICOMweb address and writes the credentials file (owner-only) the jobs read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import secrets
import signal
import subprocess
import threading
import time

import requests

from infra.ports import free_port

ORTHANC = pathlib.Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = pathlib.Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
TEST_USER = "screening-writer"  # the one user it knows (the tests and a local trial)
START_TIMEOUT_S = 30.0
STOP_BOUND_S = 10.0  # how long a stopping Orthanc may take before it is killed (it needs about 4-5 s)


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (a sentence naming what to install), or None."""
    for path, package in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
        if not path.exists():
            return f"needs {path} (apt-get install orthanc orthanc-dicomweb; missing package {package})"
    return None


class OrthancServer:
    """One Orthanc process on localhost, its configuration and files under ``folder``."""

    def __init__(self, folder: pathlib.Path, user: str = TEST_USER, password: str | None = None):
        self.folder, self.user = pathlib.Path(folder), user
        self.password = password or secrets.token_hex(12)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.config_path = self.folder / "orthanc.json"
        self.log_path = self.folder / "orthanc.log"
        self.write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, as a DICOMweb client takes it (no trailing slash)."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def write_config(self) -> None:
        (self.folder / "storage").mkdir(parents=True, exist_ok=True)
        (self.folder / "index").mkdir(exist_ok=True)
        config = {
            "Name": "mri-screen-test-pacs", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password}, "OverwriteInstances": True,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self) -> OrthancServer:
        """Start Orthanc in the foreground (a child process) and return once ``/system`` answers."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([str(ORTHANC), str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT)
        self.wait_until_ready()
        return self

    def wait_until_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {self.process.returncode} while starting: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/system", auth=self.auth, timeout=1).ok:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout:.0f} s: {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Stop it at once (SIGKILL), as a crash or a pulled cable would; ``start`` brings it back."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def stop(self, wait: bool = False) -> None:
        """SIGTERM; with ``wait``, return once it exited (killed after ``STOP_BOUND_S``), else at once, a reaper
        thread doing the waiting. Either way the ports stay this server's, so ``start`` reuses them."""
        if not self.running:
            return
        process = self.process
        process.send_signal(signal.SIGTERM)
        if wait:
            reap(process)
        else:
            reaper = threading.Thread(target=reap, args=(process,), name="orthanc-reaper", daemon=True)
            reaper.start()
            REAPERS.append(reaper)

    def restart(self) -> OrthancServer:
        """Stop (waiting, so the ports are free) and start again on the same ports and storage."""
        self.stop(wait=True)
        return self.start()

    def log_tail(self, characters: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-characters:]
        return "(no log)"


REAPERS: list[threading.Thread] = []  # servers stopping in the background


def join_reapers() -> None:
    """Wait until every server stopped in the background has exited (each is killed after ``STOP_BOUND_S``)."""
    while REAPERS:
        REAPERS.pop().join()


def reap(process: subprocess.Popen) -> None:
    """Wait for a stopping process; kill it when it outlives ``STOP_BOUND_S``."""
    try:
        process.wait(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def orthanc_server(folder: pathlib.Path):
    """A started ``OrthancServer`` under ``folder`` until the block ends, then stopping in the background."""
    server = OrthancServer(folder).start()
    try:
        yield server
    finally:
        server.stop()


def upload(server: OrthancServer, folder: pathlib.Path) -> int:
    """Store every DICOM file under ``folder`` in ``server`` (Orthanc's REST ``POST /instances``); returns how many."""
    stored = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.read_bytes()[128:132] == b"DICM":
            requests.post(server.url + "/instances", data=path.read_bytes(), auth=server.auth,
                          timeout=60).raise_for_status()
            stored += 1
    return stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_pacs", description=(
        "Run a local Orthanc PACS with DICOMweb until Ctrl-C, optionally holding a folder's DICOM files; prints "
        "its DICOMweb address and writes a credentials file for the jobs."))
    parser.add_argument("--folder", default="out/local-pacs", help="its storage, index, config and log "
                        "(default: out/local-pacs)")
    parser.add_argument("--upload", type=pathlib.Path, help="a folder whose DICOM files it stores at start")
    parser.add_argument("--credentials", type=pathlib.Path, default=pathlib.Path("out/local-pacs.json"),
                        help="where to write {\"username\", \"password\"} for --dicomweb-credentials-file and "
                             "--findings-credentials-file (default: out/local-pacs.json)")
    args = parser.parse_args(argv)
    if (missing := orthanc_missing()) is not None:
        parser.exit(2, f"Orthanc cannot run here: {missing}\n")
    server = OrthancServer(pathlib.Path(args.folder).resolve())
    args.credentials.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(args.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as credentials:
        json.dump({"username": server.user, "password": server.password}, credentials)
    server.start()
    try:
        stored = upload(server, args.upload) if args.upload else 0
        print(f"PACS at dicomweb+{server.dicomweb_url} holding {stored} uploaded instance(s); credentials in "
              f"{args.credentials}; Ctrl-C stops it", flush=True)
        while server.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(wait=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
