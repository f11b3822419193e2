"""Models: GlaViTU, the DeepLabv3+ baseline, size presets and original-weight import.

Every numerical setting of GlaViTU (activation slopes, epsilons, momentum, initialisers) is
listed block by block, with its source, in :mod:`glacier_mapping.models.blocks`; parity with the
original is tested on its optical + DEM and region-encoding reference files (both heads to
1e-5, ``tests/test_weights.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from glacier_mapping.models.blocks import MCDropout, count_parameters, set_mc_dropout
from glacier_mapping.models.deeplab import build_deeplab
from glacier_mapping.models.glavitu import build_glavitu
from glacier_mapping.models.presets import PRESETS, Preset, get_preset

ARCHITECTURES = ("glavitu", "deeplab")


def set_seed(seed: int) -> None:
    """Seed Keras, NumPy and Python: a model built next starts from the same weights."""
    keras.utils.set_random_seed(seed)


def build_model(
    architecture: str,
    sensors: Sequence[str],
    patch_size: int,
    preset: str = "paper",
    location_size: int | None = None,
    deep_supervision: bool = True,
) -> keras.Model:
    """Build GlaViTU or DeepLabv3+ by name (``deep_supervision`` only applies to GlaViTU).

    Raises:
        ValueError: for an unknown architecture (or bad builder arguments).
    """
    if architecture == "glavitu":
        return build_glavitu(sensors, patch_size, preset, location_size, deep_supervision)
    if architecture == "deeplab":
        return build_deeplab(sensors, patch_size, preset, location_size)
    raise ValueError(f"Unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}.")


def load_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model of this library for inference (Keras safe mode, not compiled).

    The file's training setup (optimizer, schedule, loss) is not restored: inference does not
    need it, and restoring it would require importing the training module's custom objects.
    """
    return keras.saving.load_model(path, compile=False)


__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "MCDropout",
    "Preset",
    "build_deeplab",
    "build_glavitu",
    "build_model",
    "load_model",
    "count_parameters",
    "get_preset",
    "set_mc_dropout",
]
