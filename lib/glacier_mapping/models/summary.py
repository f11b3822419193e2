"""Parameter counts of every preset of both architectures (built, never trained)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from glacier_mapping.models import build_model, count_parameters
from glacier_mapping.models.presets import PRESETS


def parameter_table(
    architectures: Sequence[str] = ("glavitu", "deeplab"),
    presets: Sequence[str] | None = None,
    sensors: Sequence[str] = ("optical", "dem"),
    patch_size: int = 384,
) -> pd.DataFrame:
    """Parameters of each architecture and preset for one input set.

    Counted on the test model (no auxiliary head), so GlaViTU ``paper`` at 384 px is comparable
    with the original's 10,031,938.
    """
    rows = []
    for architecture in architectures:
        for preset in presets or PRESETS:
            model = build_model(architecture, sensors, patch_size, preset,
                                deep_supervision=False)
            rows.append({"model": architecture, "preset": preset, "patch_size": patch_size,
                         "sensors": "+".join(sensors), "parameters": count_parameters(model)})
    return pd.DataFrame(rows)
