"""Questions about a split's tile file: which regions it holds, which carry which sensors.

The answers come from the HDF5 groups' attributes (``region``, ``acquisition``) and datasets
(one per sensor), without reading any pixels, except :func:`region_tiles`, which reads the
tiles of one region.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from glacier_mapping.data.tiles import Tile, list_tiles, read_tile


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def split_regions(path: str | Path, acquisition: str | None = None) -> list[str]:
    """Regions of a tile file (only tiles of one ``acquisition`` kind if given), sorted."""
    with h5py.File(path, "r") as handle:
        return sorted({_text(g.attrs["region"]) for g in handle.values()
                       if acquisition is None
                       or _text(g.attrs.get("acquisition", "")) == acquisition})


def regions_with_sensors(path: str | Path, sensors: Sequence[str]) -> set[str]:
    """Regions of a tile file whose every tile carries all ``sensors``."""
    has: dict[str, bool] = {}
    with h5py.File(path, "r") as handle:
        for group in handle.values():
            region = _text(group.attrs["region"])
            has[region] = has.get(region, True) and all(s in group for s in sensors)
    return {region for region, ok in has.items() if ok}


def region_tiles(path: str | Path, region: str, sensors: Sequence[str],
                 acquisition: str | None = None) -> list[Tile]:
    """The tiles of one region (and acquisition kind) of a tile file, features of ``sensors``.

    Raises:
        ValueError: if there is no such tile.
    """
    tiles = [read_tile(path, name, sensors=list(sensors))
             for name in list_tiles(path, regions=[region])]
    tiles = [t for t in tiles if acquisition is None
             or str(t.attrs.get("acquisition", "")) == acquisition]
    if not tiles:
        raise ValueError(f"No {acquisition or ''} tiles of region {region!r} in {path}.")
    return tiles


def stack_tiles(tiles: Sequence[Tile]) -> dict[str, np.ndarray]:
    """Unlabelled features of several tiles stacked top to bottom (cropped to a common width).

    Each tile is cropped to its unpadded extent, then to the narrowest tile's width: a stand-in
    "scene" for bias optimisation, which uses no labels; random patches may straddle the seam
    between two tiles.

    Raises:
        ValueError: for no tiles or tiles with different sensors.
    """
    if not tiles:
        raise ValueError("stack_tiles needs at least one tile.")
    sensors = set(tiles[0].features)
    if any(set(t.features) != sensors for t in tiles):
        raise ValueError("All tiles must carry the same sensors to be stacked.")
    crops = []
    for tile in tiles:
        (top, left), (height, width) = tile.padding, tile.original_shape
        crops.append({s: a[top:top + height, left:left + width] for s, a in tile.features.items()})
    width = min(next(iter(c.values())).shape[1] for c in crops)
    return {s: np.concatenate([c[s][:, :width] for c in crops], axis=0) for s in sorted(sensors)}
