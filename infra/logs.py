"""Logging helpers with no dependency beyond the standard library, for code that runs with or without Ray."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def logger_at(level: int, name: str = ""):
    """The logger ``name`` (the root logger by default) at ``level`` at least, for the duration: libraries that log
    a line per node or per tensor at INFO (the ONNX converter, the quantizer) stay out of a job's log."""
    chosen = logging.getLogger(name)
    before = chosen.level
    chosen.setLevel(max(level, before))
    try:
        yield
    finally:
        chosen.setLevel(before)
