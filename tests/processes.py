"""Finding the processes of a test's own Ray by their process titles (Ray names each worker after what it runs,
e.g. ``ray::RayTrainWorker`` or ``ray::MapWorker(MapBatches(InferenceActor))``), so a test can kill one."""

from __future__ import annotations

import pathlib


def process_title(pid: int) -> bytes:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # the process has ended
        return b""


def parent(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    try:
        while pid > 1:
            pid = parent(pid)
            if pid == ancestor:
                return True
    except OSError:  # the process, or one of its parents, has ended
        pass
    return False


def processes_titled(title: str, ancestor: int) -> list[int]:
    """Live processes below ``ancestor`` whose title contains ``title``, by pid."""
    pids = [int(entry.name) for entry in pathlib.Path("/proc").iterdir() if entry.name.isdigit()]
    return sorted(pid for pid in pids if title.encode() in process_title(pid) and descends_from(pid, ancestor))


def descendants(ancestor: int) -> list[int]:
    pids = [int(entry.name) for entry in pathlib.Path("/proc").iterdir() if entry.name.isdigit()]
    return sorted(pid for pid in pids if descends_from(pid, ancestor))
