"""Finding the processes of a test's own Ray by their process titles (Ray names each worker after what it runs,
e.g. ``ray::RayTrainWorker`` or ``ray::MapWorker(MapBatches(InferenceActor))``), so a test can kill one."""

from __future__ import annotations

import psutil


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
