"""Tables and samples that describe a benchmark: sensors per region, class balance, signatures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from glacier_mapping.data.schema import SENSORS
from glacier_mapping.data.synthetic import SurfaceClass, SyntheticScene
from glacier_mapping.data.tiles import NormStats

#: Band names of each sensor group, for tables and figure labels.
BAND_NAMES: dict[str, tuple[str, ...]] = {
    "optical": ("blue", "green", "red", "NIR", "SWIR1", "SWIR2"),
    "dem": ("elevation (m)", "slope (deg)"),
    "co_pol_sar": ("co-pol asc (log10 σ0)", "co-pol desc (log10 σ0)"),
    "cross_pol_sar": ("cross-pol asc (log10 σ0)", "cross-pol desc (log10 σ0)"),
    "in_sar": ("coherence asc", "coherence desc"),
    "thermal": ("brightness temperature (K)",),
}


def sensor_availability(path: str | Path) -> pd.DataFrame:
    """Share of tiles of each region that carry each sensor (1.0 = every tile)."""
    rows = []
    with h5py.File(path, "r") as handle:
        for group in handle.values():
            region = group.attrs["region"]
            region = region.decode() if isinstance(region, bytes) else str(region)
            rows.append({"region": region, **{s: float(s in group) for s in SENSORS}})
    if not rows:
        raise ValueError(f"{path} holds no tiles.")
    return pd.DataFrame(rows).groupby("region").mean().round(2)


def class_balance(summary: pd.DataFrame) -> pd.DataFrame:
    """Tiles and glacier share per region and split, from ``BenchmarkFiles.summary()``."""
    table = summary.pivot_table(
        index="region", columns="split", values=["tiles", "glacier_share"],
        aggfunc={"tiles": "sum", "glacier_share": "mean"},
    )
    table.columns = [f"{split} {what.replace('_', ' ')}" for what, split in table.columns]
    return table.round(3)


def normalisation_table(stats: NormStats) -> pd.DataFrame:
    """Minimum and maximum of every band used for min-max normalisation."""
    rows = []
    for sensor, lows in stats.minimum.items():
        for band, low, high in zip(BAND_NAMES[sensor], lows, stats.maximum[sensor], strict=True):
            rows.append({"sensor": sensor, "band": band, "minimum": low, "maximum": high})
    return pd.DataFrame(rows)


def class_signatures(
    scene: SyntheticScene,
    bands: Sequence[tuple[str, int]],
    classes: Sequence[SurfaceClass] = (
        SurfaceClass.CLEAN_ICE, SurfaceClass.DEBRIS_ICE, SurfaceClass.ROCK
    ),
    samples: int = 400,
    seed: int = 0,
) -> pd.DataFrame:
    """Raw sensor values sampled per surface class (cloud-free, sunlit pixels).

    Args:
        scene: A synthetic scene (its class map is known, unlike real data's).
        bands: ``(sensor, band index)`` pairs to sample.
        classes: Surface classes to compare.
        samples: Pixels sampled per class (fewer if the class is rarer).
        seed: Sampling seed.

    Returns:
        Long table with columns ``class``, ``band``, ``value``.
    """
    rng = np.random.default_rng(seed)
    visible = (scene.classes == scene.surface) & ~scene.shadow
    rows = []
    for surface in classes:
        where = np.flatnonzero((scene.surface == surface) & visible)
        if where.size == 0:
            continue
        pick = rng.choice(where, size=min(samples, where.size), replace=False)
        for sensor, index in bands:
            if sensor not in scene.features:
                raise ValueError(f"Scene of {scene.region.code} has no {sensor!r} data.")
            values = scene.features[sensor][..., index].reshape(-1)[pick]
            label = BAND_NAMES[sensor][index]
            name = surface.name.replace("_", " ").lower()
            rows += [{"class": name, "band": label, "value": float(v)} for v in values]
    return pd.DataFrame(rows)
