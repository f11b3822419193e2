"""Mute TensorFlow's start-up banner, printed on file descriptor 2 when TensorFlow is imported.

With oneDNN on (TensorFlow's default on x86 CPUs, about twice as fast here as without)
TensorFlow prints an informational line on standard error even at ``TF_CPP_MIN_LOG_LEVEL=3``,
and Jupyter kernels copy that line into every executed notebook. :func:`mute_tensorflow_import`
arranges for the first import of TensorFlow, wherever it happens (``import keras`` included),
to run with file descriptor 2 silenced, so processes that never use TensorFlow (the runner,
configuration checks) do not pay for importing it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType


class _MutedLoader(importlib.abc.Loader):
    """Run another loader with file descriptor 2 pointed at ``os.devnull``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute the module muted; its exceptions still propagate."""
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            self._loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
            module.__loader__ = self._loader  # the module keeps its own loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Find ``tensorflow`` with a muted loader until it is imported.

    It stays in place after a mere look-up (``importlib.util.find_spec("tensorflow")``, e.g.
    to ask whether TensorFlow is installed), so that the import that follows is muted too.
    """

    def find_spec(
        self, name: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow" or name in sys.modules:
            return None
        index = sys.meta_path.index(self)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(index, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)
        return spec


def mute_tensorflow_import() -> None:
    """Mute the first import of TensorFlow in this process (no-op once it is imported).

    Only the import is muted: TensorFlow's later warnings and errors reach standard error as
    usual (``TF_CPP_MIN_LOG_LEVEL`` defaults to 3, errors only).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(
        isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())
