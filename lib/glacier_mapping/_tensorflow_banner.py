"""Import TensorFlow with its start-up banner on the standard-error file descriptor silenced."""

from __future__ import annotations

import importlib.util
import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (when installed and not yet imported) with file descriptor 2 muted.

    Only the import is muted: errors raised by the import still propagate as Python
    exceptions, and TensorFlow's later warnings and errors reach standard error as usual
    (``TF_CPP_MIN_LOG_LEVEL`` defaults to 3, errors only).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
