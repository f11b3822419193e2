"""Glacier change between two dates: per glacier from two inventory layers, per pixel from rasters.

Per glacier (:func:`glacier_change`): the layers of two dates of the same area
(:func:`glacier_mapping.inventory.inventory_layer`) are matched by ``rgi_id``; glaciers without
an id (new glaciers, outside every inventory outline) are matched by the largest overlap of
their outlines, one to one. A glacier on one date only has ``appeared`` or ``vanished``, with
zero area, and no interval, on the other date.

The change interval (:func:`change_interval`) combines the two dates' area intervals in
quadrature, each side separately: the lower end of the change is
``expected change - sqrt((after - after low)^2 + (before high - before)^2)``, the upper end
likewise. Why: the two dates are different acquisitions (other snow, light, shadows and
clouds), so their classification errors are taken as independent, and for independent errors
the variances add; the quadrature is exact for normal errors with matching interval levels and
close for the mildly skewed intervals of the area model. Where a model makes the same error on
both dates (a debris tongue it always misses), the errors cancel in the difference and the
interval is wider than it needs to be. Misregistration between the scenes is not included.
Only the layers' intervals are needed, so the change can be computed from GeoPackages alone.

Per pixel (:func:`change_raster`): two class rasters on the same grid (glacier 1, not glacier
0, anything else nodata) give a uint8 raster: 0 stable non-glacier, 1 stable glacier,
2 gained, 3 lost, 255 nodata (either date).
"""

from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

from glacier_mapping.data.scenes import Grid
from glacier_mapping.pixel_geometry import pixel_areas_km2
from glacier_mapping.store import atomic_path

#: Codes of the change raster.
CHANGE_CLASSES: dict[int, str] = {0: "stable non-glacier", 1: "stable glacier", 2: "gained",
                                  3: "lost"}
CHANGE_NODATA = 255
#: Layer columns a change needs.
LAYER_COLUMNS = ("rgi_id", "glac_name", "area_km2", "expected_area_km2", "area_low_km2",
                 "area_high_km2")
_STRIP_ROWS = 1024
_BLOCK = 256


class ChangeError(ValueError):
    """Inputs that cannot be compared; the message names them and the fix."""


def change_interval(before: np.ndarray, before_low: np.ndarray, before_high: np.ndarray,
                    after: np.ndarray, after_low: np.ndarray, after_high: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Change ``after - before`` with its interval (see the module docstring)."""
    before, before_low, before_high, after, after_low, after_high = (
        np.asarray(value, dtype=np.float64)
        for value in (before, before_low, before_high, after, after_low, after_high))
    change = after - before
    low = change - np.hypot(after - after_low, before_high - before)
    high = change + np.hypot(after_high - after, before - before_low)
    return change, low, high


def _check_layer(layer: gpd.GeoDataFrame, name: str) -> None:
    missing = [column for column in LAYER_COLUMNS if column not in layer.columns]
    if missing:
        raise ChangeError(f"The {name} layer lacks column(s) {missing}; pass layers made by "
                          "glacier_mapping.inventory.inventory_layer.")
    ids = layer["rgi_id"].dropna()
    ids = ids[ids != ""]
    if ids.duplicated().any():
        raise ChangeError(f"The {name} layer lists rgi_id(s) "
                          f"{sorted(set(ids[ids.duplicated()]))} more than once.")


def _overlap_pairs(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame) -> list[tuple[int, int]]:
    """One-to-one pairs of row positions, by decreasing overlap of the outlines."""
    if before.empty or after.empty:
        return []
    first, second = before.sindex.query(after.geometry.values, predicate="intersects")[::-1]
    overlap = shapely.area(shapely.intersection(before.geometry.values[first],
                                                after.geometry.values[second]))
    pairs, used_before, used_after = [], set(), set()
    for position in np.argsort(-overlap, kind="stable"):
        i, j = int(first[position]), int(second[position])
        if overlap[position] > 0 and i not in used_before and j not in used_after:
            pairs.append((i, j))
            used_before.add(i)
            used_after.add(j)
    return pairs


def glacier_change(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame) -> pd.DataFrame:
    """Per-glacier change between two inventory layers of the same area.

    Returns:
        One row per glacier: ``rgi_id``, ``glac_name``, ``status`` (``matched``,
        ``appeared``, ``vanished``), ``matched_by`` (``rgi_id``, ``overlap`` or empty),
        ``area_before_km2``, ``area_after_km2``, ``area_change_km2`` (mapped areas),
        ``expected_change_km2``, ``change_low_km2``, ``change_high_km2`` (from the expected
        areas and intervals) and ``relative_change`` (``area_change / area_before``).
    """
    for layer, name in ((before, "before"), (after, "after")):
        _check_layer(layer, name)
    before, after = (layer.assign(rgi_id=layer["rgi_id"].fillna("").astype(str))
                     for layer in (before, after.to_crs(before.crs)))
    named = [{ident: index for index, ident in layer["rgi_id"].items() if ident != ""}
             for layer in (before, after)]
    ids = list(named[0]) + [ident for ident in named[1] if ident not in named[0]]
    rows = [(named[0].get(ident), named[1].get(ident), "rgi_id") for ident in ids]
    unnamed = [layer[layer["rgi_id"] == ""] for layer in (before, after)]
    pairs = _overlap_pairs(*unnamed)
    rows += [(unnamed[0].index[i], unnamed[1].index[j], "overlap") for i, j in pairs]
    rows += [(index, None, "") for position, index in enumerate(unnamed[0].index)
             if position not in {i for i, _ in pairs}]
    rows += [(None, index, "") for position, index in enumerate(unnamed[1].index)
             if position not in {j for _, j in pairs}]
    return _change_table(before, after, rows)


def _side(layer: gpd.GeoDataFrame, indices: list[object], column: str) -> np.ndarray:
    values = [0.0 if index is None else float(layer.at[index, column]) for index in indices]
    return np.asarray(values, dtype=np.float64)


def _change_table(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame,
                  rows: list[tuple[object, object, str]]) -> pd.DataFrame:
    first = [row[0] for row in rows]
    second = [row[1] for row in rows]
    values = {side: {column: _side(layer, indices, column) for column in LAYER_COLUMNS[2:]}
              for side, layer, indices in (("before", before, first), ("after", after, second))}
    expected, low, high = change_interval(
        *(values["before"][c] for c in ("expected_area_km2", "area_low_km2", "area_high_km2")),
        *(values["after"][c] for c in ("expected_area_km2", "area_low_km2", "area_high_km2")))
    area_before, area_after = values["before"]["area_km2"], values["after"]["area_km2"]

    def text(column: str) -> list[str]:
        return [str(before.at[i, column]) if i is not None else str(after.at[j, column])
                for i, j, _ in rows]

    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(area_before > 0, (area_after - area_before) / area_before, np.nan)
    return pd.DataFrame({
        "rgi_id": text("rgi_id"),
        "glac_name": text("glac_name"),
        "status": ["matched" if i is not None and j is not None else
                   "vanished" if j is None else "appeared" for i, j, _ in rows],
        "matched_by": [how if i is not None and j is not None else "" for i, j, how in rows],
        "area_before_km2": area_before,
        "area_after_km2": area_after,
        "area_change_km2": area_after - area_before,
        "expected_change_km2": expected,
        "change_low_km2": low,
        "change_high_km2": high,
        "relative_change": relative,
    })


def _grid(dataset: rasterio.io.DatasetReader) -> Grid:
    return Grid(dataset.crs, dataset.transform, dataset.height, dataset.width)


def change_raster(before_path: str | os.PathLike[str], after_path: str | os.PathLike[str],
                  out_path: str | os.PathLike[str]) -> dict[str, float]:
    """Write the per-pixel change of two class rasters; returns each class's area (km²).

    Raises:
        ChangeError: if the rasters are not on the same grid (CRS, transform and size).
    """
    with rasterio.open(before_path) as first, rasterio.open(after_path) as second:
        grids = _grid(first), _grid(second)
        same = (grids[0].crs == grids[1].crs
                and (grids[0].height, grids[0].width) == (grids[1].height, grids[1].width)
                and grids[0].transform.almost_equals(grids[1].transform))
        if not same:
            raise ChangeError(
                f"{before_path} ({grids[0].describe()}, {grids[0].width} x {grids[0].height} px"
                f", origin {grids[0].transform.c:g}, {grids[0].transform.f:g}) and {after_path} "
                f"({grids[1].describe()}, {grids[1].width} x {grids[1].height} px, origin "
                f"{grids[1].transform.c:g}, {grids[1].transform.f:g}) are on different grids; "
                "warp one onto the other's grid (e.g. gdalwarp -t_srs -tr -te -tap) first."
            )
        grid = grids[0]
        profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1,
                   "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
                   "nodata": CHANGE_NODATA, "tiled": True, "blockxsize": _BLOCK,
                   "blockysize": _BLOCK, "compress": "deflate"}
        areas = np.zeros(len(CHANGE_CLASSES))
        with atomic_path(out_path) as temporary, rasterio.open(temporary, "w", **profile) as out:
            for top in range(0, grid.height, _STRIP_ROWS):
                window = Window(0, top, grid.width, min(_STRIP_ROWS, grid.height - top))
                was, now = first.read(1, window=window), second.read(1, window=window)
                known = np.isin(was, (0, 1)) & np.isin(now, (0, 1))
                code = np.select([~known, was == now, now == 1],
                                 [CHANGE_NODATA, now.astype(np.int64), 2], default=3)
                code = code.astype(np.uint8)
                out.write(code, 1, window=window)
                pixel = pixel_areas_km2(grid, slice(top, top + int(window.height)))
                areas += np.bincount(code[known], weights=pixel[known],
                                     minlength=len(CHANGE_CLASSES))
    return {name: float(areas[value]) for value, name in CHANGE_CLASSES.items()}

