"""glacier_mapping: a reproducible re-derivation of GlaViTU glacier mapping (Maslov et al.).

Importing the package does not import TensorFlow; the first module that does imports it with
its C++ start-up banner silenced (see :mod:`glacier_mapping._tensorflow_banner`).
``glacier_mapping.map_glaciers`` (:func:`glacier_mapping.mapping.map_glaciers`) is imported on
first use.
"""

import importlib

from glacier_mapping._tensorflow_banner import mute_tensorflow_import

__version__ = "0.1.0"

mute_tensorflow_import()


def __getattr__(name: str) -> object:
    """``glacier_mapping.map_glaciers``, imported (with TensorFlow) on first use."""
    if name == "map_glaciers":
        return importlib.import_module("glacier_mapping.mapping").map_glaciers
    raise AttributeError(f"module 'glacier_mapping' has no attribute {name!r}")
