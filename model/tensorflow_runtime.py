"""TensorFlow and tf_keras, imported in one place, quietly unless asked otherwise.

TensorFlow 2.21 writes its start-up notices (oneDNN, CUDA probing on CPU-only machines) from C++ before its
logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not hide them. When that variable asks for quiet (1 or
more: the jobs set 3 unless ``--verbose``), the process's native stderr is pointed at /dev/null for the duration of
the import only; Python exceptions raised by the import still surface. Every module that builds or runs a network
takes ``tf`` and ``keras`` from here. ``keras`` is tf_keras (the Keras 2 API): Keras 3 models fail under
``MultiWorkerMirroredStrategy`` in Ray Train.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool):
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_requested() -> bool:
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    return level.isdigit() and int(level) >= 1


with native_stderr_silenced(quiet_requested()):
    import tensorflow as tf
    import tf_keras as keras

__all__ = ["keras", "tf"]
