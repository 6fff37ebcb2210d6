"""How a run ends badly, for every orchestrator alike: it could not start, or it failed part-way.

:class:`RunNotStartedError` means nothing was written (a missing input, model, key or bucket; unusable data); the
jobs exit with status 2. :class:`RunFailedError` means the run started and stopped before its commit (screening:
every date reads as before; retraining: the registry is unchanged); the jobs exit with status 3.
"""

from __future__ import annotations


class RunNotStartedError(RuntimeError):
    """The run cannot start; nothing was written. The message says what to fix."""


class RunFailedError(RuntimeError):
    """The run started but could not finish; it committed nothing."""


def describe_failure(error: BaseException) -> str:
    """One line naming a failure: the root cause of a Ray task error rather than its remote traceback."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()
