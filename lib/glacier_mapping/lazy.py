"""The one lazy importer: TensorFlow-heavy modules named at the top of a file, loaded on first use.

Importing TensorFlow takes seconds, and processes that never run a model (the runner, the CLI's
checks, the findings and the Results page) should not pay for it. A module that needs one of the
TensorFlow-backed modules for some of its functions names it at the top with::

    training = lazy_module("glacier_mapping.training")

so its dependencies stay visible in one place, and the module is executed the first time one of
its attributes is used. Modules already imported are returned as they are. Only for the
project's own modules: third-party packages that arrange their own imports when loaded (Keras,
TensorFlow) are imported normally where they are needed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, executed on first attribute access (``importlib.util.LazyLoader``).

    A submodule is found without importing its package (``glacier_mapping.models.weights``
    does not load Keras through ``glacier_mapping.models``); it is bound to its package when
    the package is already imported, as the import system would.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = _find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``name``, looking inside its package's folders without importing it."""
    parent, _, _ = name.rpartition(".")
    if not parent or parent in sys.modules:
        return importlib.util.find_spec(name)
    package = _find_spec(parent)
    if package is None or package.submodule_search_locations is None:
        return None
    return importlib.machinery.PathFinder.find_spec(name, package.submodule_search_locations)
