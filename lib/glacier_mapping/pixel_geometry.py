"""Geometry of pixels on a north-up grid: their areas on the ellipsoid and nearest labels.

Areas are ellipsoidal (the grid CRS's own ellipsoid): for a projected CRS, a pixel's plane area
divided by the projection's areal scale at its centre (pyproj ``get_factors``, evaluated on a
lattice of every :data:`AREA_LATTICE_STEP`-th pixel and interpolated bilinearly, which changes
the areas of a UTM scene by less than 1e-7 relative); for a geographic CRS, the geodesic area of
each row's cell. Distances between pixels use the pixel size in metres at the scene centre (exact
on a projected grid up to the projection's scale, about 0.04 % in UTM).
"""

from __future__ import annotations

import numpy as np
import pyproj
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

from glacier_mapping.data.scenes import Grid

#: Spacing (pixels) of the lattice on which a projection's areal scale is evaluated.
AREA_LATTICE_STEP = 64


def _check_north_up(grid: Grid) -> None:
    if grid.transform.b != 0 or grid.transform.d != 0:
        raise ValueError(
            f"The grid's transform {tuple(grid.transform)[:6]} is rotated; warp the raster to a "
            "north-up grid (e.g. gdalwarp) first."
        )


def _centres(start: float, step: float, indices: np.ndarray) -> np.ndarray:
    return start + step * (indices + 0.5)


def pixel_areas_km2(grid: Grid, rows: slice | None = None) -> np.ndarray:
    """Ellipsoidal area (km²) of every pixel of ``grid`` (or of the rows ``rows``), ``(h, W)``."""
    _check_north_up(grid)
    start, stop, _ = (rows or slice(0, grid.height)).indices(grid.height)
    crs = pyproj.CRS.from_user_input(grid.crs.to_wkt())
    t = grid.transform
    if crs.is_geographic:
        geod = crs.get_geod()
        width = abs(t.a)
        areas = np.empty(stop - start)
        for index, row in enumerate(range(start, stop)):
            top, bottom = t.f + t.e * row, t.f + t.e * (row + 1)
            area, _ = geod.polygon_area_perimeter([0.0, width, width, 0.0],
                                                  [bottom, bottom, top, top])
            areas[index] = abs(area) / 1e6
        return np.repeat(areas[:, None], grid.width, axis=1)
    unit = crs.axis_info[0].unit_conversion_factor
    plane_km2 = abs(t.a * t.e) * unit**2 / 1e6
    lattice_rows = np.unique(np.r_[np.arange(start, stop, AREA_LATTICE_STEP), stop - 1])
    lattice_cols = np.unique(np.r_[np.arange(0, grid.width, AREA_LATTICE_STEP), grid.width - 1])
    x, y = np.meshgrid(_centres(t.c, t.a, lattice_cols), _centres(t.f, t.e, lattice_rows))
    to_geographic = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lon, lat = to_geographic.transform(x, y)
    scale = pyproj.Proj(crs).get_factors(lon, lat).areal_scale
    if len(lattice_rows) == 1 or len(lattice_cols) == 1:  # a single row or column of pixels
        scale = np.broadcast_to(scale.mean(), (stop - start, grid.width))
    else:
        interpolate = RegularGridInterpolator((lattice_rows, lattice_cols), scale)
        r, c = np.meshgrid(np.arange(start, stop), np.arange(grid.width), indexing="ij")
        scale = interpolate(np.stack([r.ravel(), c.ravel()], axis=-1)).reshape(r.shape)
    return plane_km2 / scale


def pixel_spacing_m(grid: Grid) -> tuple[float, float]:
    """Pixel height and width in metres at the scene centre, ``(dy, dx)``."""
    _check_north_up(grid)
    crs = pyproj.CRS.from_user_input(grid.crs.to_wkt())
    t = grid.transform
    if not crs.is_geographic:
        unit = crs.axis_info[0].unit_conversion_factor
        return abs(t.e) * unit, abs(t.a) * unit
    geod = crs.get_geod()
    lon = t.c + t.a * grid.width / 2
    lat = t.f + t.e * grid.height / 2
    _, _, dy = geod.inv(lon, lat - abs(t.e) / 2, lon, lat + abs(t.e) / 2)
    _, _, dx = geod.inv(lon - t.a / 2, lat, lon + t.a / 2, lat)
    return float(dy), float(dx)


def expand_labels(labels: np.ndarray, grid: Grid, max_distance_m: float) -> np.ndarray:
    """Give every unlabelled pixel the label of the nearest labelled pixel within a distance.

    Distances run between pixel centres (Euclidean, in metres at the pixel spacing of
    :func:`pixel_spacing_m`); labelled pixels keep their label, pixels farther than
    ``max_distance_m`` from every labelled pixel stay 0.
    """
    labels = np.asarray(labels)
    if not labels.any():
        return np.zeros_like(labels)
    distance, (nearest_row, nearest_col) = ndimage.distance_transform_edt(
        labels == 0, sampling=pixel_spacing_m(grid), return_indices=True)
    return np.where(distance <= max_distance_m, labels[nearest_row, nearest_col], 0).astype(
        labels.dtype)
