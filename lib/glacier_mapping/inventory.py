"""From a glacier mask to a glacier inventory: one outline per glacier, with inventory ids.

:func:`split_by_inventory` gives every predicted glacier pixel to an inventory glacier: the one
whose outline contains the pixel centre or, outside every outline, the one nearest to it (the
nearest pixel centre inside an outline, so distances are exact to a pixel) within
``max_distance_m``. Ice farther from every outline forms new, unnamed glaciers, one per
4-connected component. Outlines in RGI 6.0 (``RGIId``, ``GLIMSId``, ``Name``) or RGI 7.0
(``rgi_id``, ``glims_id``, ``glac_name``) columns and any CRS are accepted; they are reprojected
to the raster's CRS, and invalid geometries are repaired with ``shapely.make_valid`` (with a
note). Where outlines overlap, the later one takes the shared pixels.

:func:`inventory_layer` turns the labels into polygons (holes, such as nunataks, kept) in WGS 84
with RGI 7.0-style attributes and ours. Areas are on the ellipsoid, summed per pixel
(:func:`glacier_mapping.pixel_geometry.pixel_areas_km2`). Columns:

=====================  ==========================================================================
column                 meaning
=====================  ==========================================================================
``rgi_id``             inventory id of the glacier; empty for a new glacier
``glims_id``           GLIMS id from the inventory; empty when unknown or new
``glac_name``          inventory name; empty when unnamed
``src_date``           acquisition date of the scene (``YYYY-MM-DD``)
``cenlon``, ``cenlat`` a point inside the outline (its centroid when inside, else
                       shapely's ``point_on_surface``), degrees WGS 84
``utm_zone``           UTM zone of ``cenlon`` (standard 6-degree zones, no Norway/Svalbard
                       exceptions)
``area_km2``           mapped area: the glacier's pixels, on the ellipsoid
``zmin_m`` ...         with a DEM only: ``zmin_m``, ``zmax_m``, ``zmed_m`` (median), ``zmean_m``
                       of the glacier's pixels (m)
``slope_deg``          with a DEM only: mean slope of the glacier's pixels (degrees)
``aspect_deg``         with a DEM only: circular mean of the pixels' aspect (degrees clockwise
                       from north, the direction the slope faces; flat pixels left out)
``mean_confidence``    mean calibrated confidence ``max(p, 1 - p)`` of the glacier's pixels
``expected_area_km2``  ``sum(p * pixel area)`` over the glacier's zone: its pixels and every
                       pixel nearer to it than to another glacier, within ``zone_m`` (averaged
                       over the drawn acquisition shifts, given a ``shift``)
``area_low_km2``       lower end of the interval of the true area in the zone
                       (:mod:`glacier_mapping.area_uncertainty`, 5 % quantile by default)
``area_high_km2``      upper end (95 % quantile by default)
``inventory_area_km2`` area of the valid scene pixels whose centres lie inside the inventory
                       outline (the outline rasterised as the mapped area is, so a perfect map
                       of an unchanged glacier gives no change); NaN for new glaciers
``area_change_km2``    ``area_km2 - inventory_area_km2``
``label``              the glacier's value in the label raster
=====================  ==========================================================================
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from scipy import ndimage
from shapely.geometry import shape

from glacier_mapping.area_uncertainty import (
    LEVEL,
    SAMPLES,
    AcquisitionShift,
    AreaSamples,
    bootstrap_areas,
)
from glacier_mapping.data.scenes import Grid
from glacier_mapping.pixel_geometry import expand_labels, pixel_areas_km2, pixel_spacing_m
from glacier_mapping.store import atomic_path

logger = logging.getLogger(__name__)

#: Inventory column names: version -> (id, GLIMS id, name).
INVENTORY_COLUMNS: dict[str, tuple[str, str, str]] = {
    "RGI 7.0": ("rgi_id", "glims_id", "glac_name"),
    "RGI 6.0": ("RGIId", "GLIMSId", "Name"),
}
#: Ice this close (m) to an outline is given to it by default.
DEFAULT_MAX_DISTANCE_M = 100.0
#: Default reach (m) of a glacier's zone for its expected area and interval.
DEFAULT_ZONE_M = 100.0
GEOGRAPHIC = "EPSG:4326"
LAYER_NAME = "glaciers"


class InventoryError(ValueError):
    """Outlines or rasters that cannot be split; the message names the problem and the fix."""


@dataclass
class InventorySplit:
    """Glacier pixels labelled by inventory glacier.

    Attributes:
        labels: int32 raster; 0 no glacier, ``1..K`` the inventory glaciers that intersect the
            grid (in the outlines' order), ``K+1..`` new glaciers.
        glaciers: one row per label: ``label``, ``rgi_id``, ``glims_id``, ``glac_name``,
            ``origin`` (``inventory`` or ``new``), ``pixels`` (0 for an inventory glacier
            without predicted ice) and ``inventory_area_km2``.
        inventory: ``RGI 6.0``, ``RGI 7.0`` or None (no outlines).
        notes: what was repaired or left out, in words.
    """

    labels: np.ndarray
    glaciers: pd.DataFrame
    inventory: str | None
    notes: list[str] = field(default_factory=list)


def _columns(outlines: gpd.GeoDataFrame) -> tuple[str, tuple[str, str, str]]:
    """The inventory version and its (id, GLIMS id, name) columns."""
    for version, columns in INVENTORY_COLUMNS.items():
        if columns[0] in outlines.columns:
            return version, columns
    wanted = " or ".join(f"{version} ({', '.join(c)})" for version, c in INVENTORY_COLUMNS.items())
    raise InventoryError(
        f"The outlines have columns {list(outlines.columns)}; expected the id column of "
        f"{wanted}. Rename the id column to 'rgi_id' (and the name to 'glac_name')."
    )


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygons of ``shapely.make_valid(geometry)`` (lines and points dropped)."""
    fixed = shapely.make_valid(geometry)
    parts = [part for part in shapely.get_parts(fixed)
             if part.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _repair(geometries: gpd.GeoSeries, ids: pd.Series, notes: list[str], where: str
            ) -> gpd.GeoSeries:
    """Repair invalid geometries with ``make_valid``, noting which ones."""
    invalid = ~geometries.is_valid & ~geometries.is_empty
    if not invalid.any():
        return geometries
    reasons = [f"{ident} ({shapely.is_valid_reason(geom)})"
               for ident, geom in zip(ids[invalid][:5], geometries[invalid][:5], strict=True)]
    more = f" and {int(invalid.sum()) - 5} more" if invalid.sum() > 5 else ""
    notes.append(f"{int(invalid.sum())} of {len(geometries)} outlines were invalid {where}: "
                 f"{', '.join(reasons)}{more}; repaired with shapely.make_valid.")
    repaired = geometries.copy()
    repaired[invalid] = [_polygonal(geom) for geom in geometries[invalid]]
    return repaired


def _prepare(outlines: gpd.GeoDataFrame, grid: Grid, notes: list[str]
             ) -> tuple[str, gpd.GeoDataFrame]:
    """Outlines in the grid's CRS, repaired, with columns rgi_id, glims_id, glac_name."""
    version, (id_column, glims_column, name_column) = _columns(outlines)
    if outlines.crs is None:
        raise InventoryError("The outlines have no CRS; set it (GeoDataFrame.set_crs) first.")
    text = {
        new: (outlines[old].astype(object).where(outlines[old].notna(), "").astype(str)
              if old in outlines.columns else pd.Series("", index=outlines.index))
        for new, old in (("rgi_id", id_column), ("glims_id", glims_column),
                         ("glac_name", name_column))
    }
    ids = text["rgi_id"]
    geometry = _repair(outlines.geometry, ids, notes, "as given")
    geometry = _repair(geometry.to_crs(grid.crs), ids, notes, "after reprojection")
    frame = gpd.GeoDataFrame(text, geometry=geometry.values, crs=grid.crs)
    footprint = shapely.box(*grid.bounds)
    keep = frame.intersects(footprint) & ~frame.is_empty
    if not keep.any():
        notes.append(f"None of the {len(frame)} outlines intersects the scene.")
    return version, frame[keep].reset_index(drop=True)


def split_by_inventory(glacier_mask: np.ndarray, grid: Grid,
                       outlines: gpd.GeoDataFrame | None,
                       max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
                       valid: np.ndarray | None = None) -> InventorySplit:
    """Label predicted glacier pixels by inventory glacier (see the module docstring).

    Args:
        glacier_mask: ``(H, W)``; glacier where it equals 1 (or True), so a class raster with
            nodata 255 works as it is.
        grid: the raster's grid (CRS, north-up transform, shape).
        outlines: inventory outlines (RGI 6.0 or 7.0 columns, any CRS), or None to split the
            ice into connected components only.
        max_distance_m: ice outside every outline but this close to one goes to the nearest.
        valid: pixels with data (default all); the inventory area counts only these.

    Raises:
        InventoryError: for a mask of the wrong shape, outlines without an RGI id column or
            without a CRS, or a negative distance.
    """
    glacier = np.asarray(glacier_mask) == 1
    shape_ = (grid.height, grid.width)
    valid = np.ones(shape_, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if glacier.shape != shape_ or valid.shape != shape_:
        raise InventoryError(f"The mask {glacier.shape} and valid {valid.shape} arrays must "
                             f"have the grid's shape {shape_}.")
    if not max_distance_m >= 0:
        raise InventoryError(f"max_distance_m must be >= 0; got {max_distance_m}.")
    glacier &= valid
    notes: list[str] = []
    version = None
    inventory = gpd.GeoDataFrame({"rgi_id": [], "glims_id": [], "glac_name": []},
                                 geometry=[], crs=grid.crs)
    if outlines is not None:
        version, inventory = _prepare(outlines, grid, notes)
    inside = np.zeros(shape_, dtype=np.int32)
    if len(inventory):
        inside = rasterio.features.rasterize(
            zip(inventory.geometry, range(1, len(inventory) + 1), strict=True),
            out_shape=shape_, transform=grid.transform, fill=0, dtype="int32")
    labels = np.where(glacier, expand_labels(inside, grid, max_distance_m), 0).astype(np.int32)
    remaining = glacier & (labels == 0)
    new, count = ndimage.label(remaining)
    labels[remaining] = new[remaining] + len(inventory)
    total = len(inventory) + count
    pixels = np.bincount(labels.ravel(), minlength=total + 1)[1:]
    areas = pixel_areas_km2(grid)
    inventory_area = np.bincount(inside[valid], weights=areas[valid],
                                 minlength=len(inventory) + 1)[1:]
    glaciers = pd.DataFrame({
        "label": np.arange(1, total + 1, dtype=np.int32),
        "rgi_id": list(inventory["rgi_id"]) + [""] * count,
        "glims_id": list(inventory["glims_id"]) + [""] * count,
        "glac_name": list(inventory["glac_name"]) + [""] * count,
        "origin": ["inventory"] * len(inventory) + ["new"] * count,
        "pixels": pixels.astype(np.int64),
        "inventory_area_km2": np.r_[inventory_area, np.full(count, np.nan)],
    })
    for note in notes:
        logger.info("%s", note)
    return InventorySplit(labels, glaciers, version, notes)


def _check_date(date: str) -> str:
    try:
        return datetime.date.fromisoformat(str(date)).isoformat()
    except ValueError:
        raise InventoryError(f"date {date!r} is not YYYY-MM-DD.") from None


def glacier_outlines(labels: np.ndarray, grid: Grid) -> gpd.GeoSeries:
    """One (multi)polygon per label, holes kept, in the grid's CRS, indexed by label."""
    pieces: dict[int, list[shapely.Geometry]] = {}
    for geometry, value in rasterio.features.shapes(labels, mask=labels > 0,
                                                     transform=grid.transform, connectivity=4):
        pieces.setdefault(int(value), []).append(shape(geometry))
    merged = {label: parts[0] if len(parts) == 1 else shapely.union_all(parts)
              for label, parts in sorted(pieces.items())}
    return gpd.GeoSeries(list(merged.values()), index=list(merged), crs=grid.crs)


def _inner_points(outlines: gpd.GeoSeries) -> gpd.GeoSeries:
    """Centroid where it lies inside the outline, else a point on its surface, in WGS 84."""
    centroid = outlines.centroid
    points = centroid.where(outlines.contains(centroid), outlines.representative_point())
    return points.to_crs(GEOGRAPHIC)


def _dem_statistics(labels: np.ndarray, ids: np.ndarray, dem: np.ndarray, grid: Grid
                    ) -> dict[str, np.ndarray]:
    """Elevation, slope and aspect statistics of each label's pixels."""
    z = np.asarray(dem, dtype=np.float64)
    if z.shape != labels.shape:
        raise InventoryError(f"The DEM {z.shape} must be on the labels' grid {labels.shape}.")
    dy, dx = pixel_spacing_m(grid)
    dz_drow, dz_dcol = np.gradient(z)
    dz_east = dz_dcol / (dx * np.sign(grid.transform.a))
    dz_north = dz_drow / (dy * np.sign(grid.transform.e))
    slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
    aspect = np.arctan2(-dz_east, -dz_north)
    known = np.where(np.isfinite(z), labels, 0)
    sloped = np.where(np.isfinite(slope) & (slope > 0), labels, 0)
    east = ndimage.mean(np.sin(aspect), sloped, ids)
    north = ndimage.mean(np.cos(aspect), sloped, ids)
    return {
        "zmin_m": ndimage.minimum(z, known, ids), "zmax_m": ndimage.maximum(z, known, ids),
        "zmed_m": ndimage.median(z, known, ids), "zmean_m": ndimage.mean(z, known, ids),
        "slope_deg": ndimage.mean(slope, np.where(np.isfinite(slope), labels, 0), ids),
        "aspect_deg": np.degrees(np.arctan2(east, north)) % 360.0,
    }


def inventory_layer(split: InventorySplit, probability: np.ndarray, grid: Grid, date: str, *,
                    block_px: int, dem: np.ndarray | None = None, zone_m: float = DEFAULT_ZONE_M,
                    level: float = LEVEL, samples: int = SAMPLES, seed: int = 0,
                    shift: AcquisitionShift | None = None) -> gpd.GeoDataFrame:
    """Polygons per glacier with RGI 7.0-style columns and ours (see the module docstring).

    The arguments are those of :func:`inventory_layer_and_draws`, which also returns the
    area model's draws (for the scene's interval).
    """
    return inventory_layer_and_draws(split, probability, grid, date, block_px=block_px, dem=dem,
                                     zone_m=zone_m, level=level, samples=samples, seed=seed,
                                     shift=shift)[0]


def inventory_layer_and_draws(
    split: InventorySplit, probability: np.ndarray, grid: Grid, date: str, *, block_px: int,
    dem: np.ndarray | None = None, zone_m: float = DEFAULT_ZONE_M, level: float = LEVEL,
    samples: int = SAMPLES, seed: int = 0, shift: AcquisitionShift | None = None,
) -> tuple[gpd.GeoDataFrame, AreaSamples]:
    """The inventory layer and the area model's draws behind its intervals.

    Args:
        split: labels and their inventory ids (:func:`split_by_inventory`).
        probability: calibrated glacier probability on the grid, NaN where nodata (from a
            class raster and calibrated confidence:
            :func:`glacier_mapping.area_uncertainty.glacier_probability`).
        grid: the raster's grid.
        date: acquisition date of the scene, ``YYYY-MM-DD``.
        block_px: block side of the area intervals, from labelled data
            (:func:`glacier_mapping.area_uncertainty.choose_block_size` on ``label - p``).
        dem: elevation (m) on the grid, NaN where unknown; adds the DEM columns.
        zone_m: pixels this close to a glacier (and nearer to it than to another) count
            towards its expected area and interval.
        level: coverage of the area interval.
        samples: draws of the area model.
        seed: seed of the draws.
        shift: the calibration's shift between acquisitions (the calibrator's record), drawn
            once per draw for the whole scene; None leaves it out.

    Returns:
        One row per label with pixels, geometry in WGS 84 (EPSG:4326), and the draws (per
        zone and for the scene's valid pixels).
    """
    labels = split.labels
    probability = np.asarray(probability, dtype=np.float64)
    if probability.shape != labels.shape:
        raise InventoryError(f"The probability raster {probability.shape} must be on the "
                             f"labels' grid {labels.shape}.")
    if np.any((labels > 0) & ~np.isfinite(probability)):
        raise InventoryError("Some glacier pixels have no probability (NaN); the probability "
                             "raster must cover every labelled pixel.")
    table = split.glaciers.set_index("label")
    outlines = glacier_outlines(labels, grid)
    ids = outlines.index.to_numpy(dtype=np.int64)
    valid = np.isfinite(probability)
    areas = pixel_areas_km2(grid)
    zones = np.where(valid, expand_labels(labels, grid, zone_m), 0)
    drawn = bootstrap_areas(probability, zones, areas, block_px, samples, seed, shift)
    low, high = drawn.interval(level)
    position = np.searchsorted(drawn.labels, ids)
    certainty = np.where(valid, np.maximum(probability, 1.0 - probability), np.nan)
    area = np.bincount(labels.ravel(), weights=areas.ravel(), minlength=int(labels.max()) + 1)[ids]
    points = _inner_points(outlines)
    inventory_area = table.loc[ids, "inventory_area_km2"].to_numpy(dtype=np.float64)
    columns: dict[str, object] = {
        "rgi_id": table.loc[ids, "rgi_id"].to_numpy(object),
        "glims_id": table.loc[ids, "glims_id"].to_numpy(object),
        "glac_name": table.loc[ids, "glac_name"].to_numpy(object),
        "src_date": _check_date(date),
        "cenlon": points.x.to_numpy(), "cenlat": points.y.to_numpy(),
        "utm_zone": (np.floor((points.x.to_numpy() + 180.0) / 6.0) % 60 + 1).astype(np.int32),
        "area_km2": area,
    }
    if dem is not None:
        columns.update(_dem_statistics(labels, ids, dem, grid))
    columns.update({
        "mean_confidence": ndimage.mean(np.nan_to_num(certainty),
                                        np.where(valid, labels, 0), ids),
        "expected_area_km2": drawn.expected_km2[position],
        "area_low_km2": low[position], "area_high_km2": high[position],
        "inventory_area_km2": inventory_area,
        "area_change_km2": area - inventory_area,
        "label": ids.astype(np.int32),
    })
    geometry = outlines.to_crs(GEOGRAPHIC)
    invalid = ~geometry.is_valid
    if invalid.any():
        geometry[invalid] = [_polygonal(geom) for geom in geometry[invalid]]
    return gpd.GeoDataFrame(columns, geometry=geometry.values, crs=GEOGRAPHIC), drawn


def write_layer(layer: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> Path:
    """Write an inventory layer as a GeoPackage (layer ``glaciers``), atomically."""
    with atomic_path(path) as temporary:
        layer.to_file(temporary, layer=LAYER_NAME, driver="GPKG")
    return Path(path)

