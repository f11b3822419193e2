"""Inference runtimes for deployment: TensorFlow, ONNX Runtime and OpenVINO behind one interface.

:func:`load_backend` returns a :class:`~glacier_mapping.runtime.backends.Runner` for a ``.keras``
model. The non-TensorFlow runtimes load a model file exported beside the ``.keras`` file
(:mod:`glacier_mapping.runtime.artifacts`), re-exported when the ``.keras`` file changes; the
export runs in a child process, so a process that runs them never imports TensorFlow.
int8 variants are made, and accepted only if the test split's glacier IoU holds, by
:mod:`glacier_mapping.runtime.quantise`.
"""

from __future__ import annotations

from glacier_mapping.runtime.backends import (
    BACKEND_CHOICES,
    BACKENDS,
    BackendError,
    Runner,
    choose_backend,
    load_backend,
)

__all__ = ["BACKENDS", "BACKEND_CHOICES", "BackendError", "Runner", "choose_backend",
           "load_backend"]
