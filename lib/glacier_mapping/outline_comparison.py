"""Per-glacier comparison of predicted outlines with reference outlines: area and distance.

The GlaViTU paper (Maslov et al.) compares predicted glacier outlines with expert delineations
using two measures per glacier. :func:`compare_outlines` computes both for an inventory layer
(:func:`glacier_mapping.inventory.inventory_layer`) and a set of reference outlines, matched by
inventory id. :func:`summary` reduces the table to a few numbers for the scene.

**Area deviation.** ``100 * (predicted - reference) / reference`` (%), with both areas taken
inside the mapped area only. Areas are measured in a Lambert azimuthal equal-area projection
centred on the data (equal-area on the WGS 84 ellipsoid), so they agree with the layer's own
``area_km2`` (ellipsoidal pixel areas) to about 1e-6 relative when nothing is clipped, and
do not depend on the UTM zone.

**Outline distance.** The symmetric mean and 95th percentile distance between the two outlines,
a Hausdorff-type distance that averages instead of taking the maximum. Both outlines (exterior
rings and holes, such as nunataks) are sampled every ``spacing_m`` or less: every line is cut
into ``ceil(length / spacing_m)`` equal pieces and sampled at their midpoints. For every point
on the predicted outline the distance to the nearest point of the reference outline (the line,
not its samples, so the result does not depend on the sampling phase) is taken, and vice versa.
Both sets are pooled, and their mean and 95th percentile (linear interpolation) are reported.
Two identical outlines give 0; an outline shifted by ``d`` in one direction gives a mean below
``d`` wherever its edges slide along each other (a square shifted sideways by ``d``: mean
``d / 2``, 95th percentile ``d``). When either outline is empty inside the mapped area (a
glacier without prediction, a prediction without reference, or a glacier that fills the whole
mapped area), both distances are NaN.

**Mapped area.** With ``mapped_area`` (e.g. the held-out part of a scene, or a scene's
footprint from :func:`mapped_area_from_grid`), both polygons are clipped to it before their
areas are taken, and only reference glaciers that overlap it are compared. A clipped polygon's
edge along the clip line is not an outline, so both outlines are cut to the mapped area shrunk by
``edge_tolerance_m`` (a negative buffer): a sample closer than that to the edge of the mapped
area is not used, neither as a point nor as a target. This drops a predicted outline that runs
along the raster edge and the last ``edge_tolerance_m`` of every outline that crosses the edge.
With a tolerance of 0, an outline lying on the edge is kept or dropped by rounding (after a
reprojection it lies a nanometre inside or outside). Without ``mapped_area`` nothing is
clipped, and a prediction's straight edge along the scene border counts as an outline, so pass
the footprint for predictions from a scene.

**Where the measures break down.** Predicted outlines follow pixel edges: the staircase of a
pixel outline adds about a quarter to half a pixel to the distances against a smooth reference
line, even for a perfect map. The RGI 6.0 outlines of the Everest scene rasterised at 30 m
(pixel centres) and compared with themselves give a median per-glacier mean distance of 6.6 m
(0.22 pixel) and a pooled 95th percentile of 14 m (0.48 pixel), with area deviations of
0.3 % (median). Compare distances only between maps at the same pixel size. Reference
outlines of another date than the image measure glacier change as well as errors (retreating
tongues, changed snow cover). The distance says nothing about which side is wrong and is
dominated by long outlines; ice divides shared between neighbouring glaciers count for both.
Small glaciers have large relative area deviations from a pixel or two; :func:`summary` leaves
glaciers below ``min_area_km2`` out.

Columns of the :func:`compare_outlines` table:

=========================  =====================================================================
column                     meaning
=========================  =====================================================================
``rgi_id``                 inventory id; empty for a predicted glacier without an id
``glac_name``              name (the reference's, else the prediction's); may be empty
``match``                  ``both``, ``reference_only`` (no prediction for this id) or
                           ``predicted_only`` (no reference outline for this id)
``reference_area_km2``     reference area inside the mapped area; NaN without a reference
                           outline, 0 when the reference lies outside the mapped area
``predicted_area_km2``     predicted area inside the mapped area; 0 without a prediction
``area_difference_km2``    ``predicted - reference``
``area_deviation_pct``     ``100 * (predicted - reference) / reference``; NaN when the
                           reference area is 0 or NaN
``mean_distance_m``        symmetric mean outline distance (m); NaN when a side is empty
``p95_distance_m``         95th percentile of the same pooled distances (m)
``reference_outline_m``    length of the reference outline compared (inside the shrunk area)
``predicted_outline_m``    length of the predicted outline compared
``distances_m``            float64 array of the pooled distances of the row (for
                           :func:`summary`); drop it before writing the table to CSV
=========================  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from pyproj import CRS

from glacier_mapping.data.scenes import Grid
from glacier_mapping.inventory import INVENTORY_COLUMNS

#: Default spacing (m) of the samples along outlines: a third of a 30 m pixel.
DEFAULT_SPACING_M = 10.0
#: Default width (m) of the band along the edge of the mapped area whose outline is left out.
DEFAULT_EDGE_TOLERANCE_M = 1.0
#: Default smallest reference area (km²) counted by :func:`summary`.
DEFAULT_MIN_AREA_KM2 = 0.1
GEOGRAPHIC = "EPSG:4326"
#: Columns of the :func:`compare_outlines` table, in order.
COLUMNS = [
    "rgi_id", "glac_name", "match", "reference_area_km2", "predicted_area_km2",
    "area_difference_km2", "area_deviation_pct", "mean_distance_m", "p95_distance_m",
    "reference_outline_m", "predicted_outline_m", "distances_m",
]

Geometry = shapely.Geometry
MappedArea = gpd.GeoSeries | gpd.GeoDataFrame | Geometry


class OutlineComparisonError(ValueError):
    """Inputs that cannot be compared; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------
# Inputs


def _polygonal(geometry: Geometry | None) -> Geometry:
    """The polygons of ``make_valid(geometry)``, lines and points dropped; empty if none."""
    if geometry is None or shapely.is_empty(geometry):
        return shapely.Polygon()
    fixed = geometry if shapely.is_valid(geometry) else shapely.make_valid(geometry)
    parts = [part for part in shapely.get_parts(fixed)
             if part.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def _normalise(outlines: gpd.GeoDataFrame, crs: CRS, what: str) -> gpd.GeoDataFrame:
    """Outlines with text columns ``rgi_id``, ``glac_name``, valid polygons in ``crs``.

    Rows with the same non-empty id are merged; rows without an id stay separate.
    """
    if not isinstance(outlines, gpd.GeoDataFrame):
        raise OutlineComparisonError(f"The {what} outlines must be a GeoDataFrame; got "
                                     f"{type(outlines).__name__}.")
    if outlines.crs is None:
        raise OutlineComparisonError(f"The {what} outlines have no CRS; set it "
                                     "(GeoDataFrame.set_crs) first.")
    found = [(c[0], c[2]) for c in INVENTORY_COLUMNS.values() if c[0] in outlines.columns]
    if not found:
        wanted = " or ".join(f"{version} ({c[0]}, {c[2]})"
                             for version, c in INVENTORY_COLUMNS.items())
        raise OutlineComparisonError(
            f"The {what} outlines have columns {list(outlines.columns)}; expected the id column "
            f"of {wanted}. Rename the id column to 'rgi_id' (and the name to 'glac_name').")
    id_column, name_column = found[0]

    def text(column: str) -> np.ndarray:
        if column not in outlines.columns:
            return np.full(len(outlines), "", dtype=object)
        values = outlines[column].astype(object)
        return values.where(values.notna(), "").astype(str).str.strip().to_numpy(object)

    geometry = outlines.geometry.to_crs(crs)
    frame = pd.DataFrame({"rgi_id": text(id_column), "glac_name": text(name_column),
                          "geometry": [_polygonal(g) for g in geometry.values]})
    frame = frame[~shapely.is_empty(frame["geometry"].to_numpy())].reset_index(drop=True)
    named = frame["rgi_id"] != ""
    if frame.loc[named, "rgi_id"].duplicated().any():
        # merge rows of one id, keeping the order of first appearance; unnamed rows stay apart
        key = frame["rgi_id"].where(named, "\0" + frame.index.astype(str))
        frame = frame.groupby(key.to_numpy(), sort=False).agg(
            rgi_id=("rgi_id", "first"), glac_name=("glac_name", "first"),
            geometry=("geometry", lambda parts: _polygonal(shapely.union_all(list(parts)))),
        ).reset_index(drop=True)
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=crs)


def _as_series(area: MappedArea, area_crs: object | None) -> gpd.GeoSeries:
    if isinstance(area, gpd.GeoDataFrame):
        area = area.geometry
    if isinstance(area, gpd.GeoSeries):
        if area.crs is None:
            raise OutlineComparisonError("The mapped area has no CRS; set it first.")
        return area
    if isinstance(area, shapely.Geometry):
        if area_crs is None:
            raise OutlineComparisonError(
                "A mapped area given as a shapely geometry needs mapped_area_crs (or pass a "
                "GeoSeries with a CRS).")
        return gpd.GeoSeries([area], crs=area_crs)
    raise OutlineComparisonError(f"The mapped area must be a GeoSeries, GeoDataFrame or shapely "
                                 f"geometry; got {type(area).__name__}.")


def _measure_crs(crs: object | None, frames: list[gpd.GeoSeries]) -> CRS:
    """The projected CRS to measure distances in: given, or UTM of the data's centre."""
    if crs is None:
        parts = [frame.to_crs(GEOGRAPHIC) for frame in frames if len(frame)]
        data = gpd.GeoSeries(pd.concat(parts, ignore_index=True) if parts else [],
                             crs=GEOGRAPHIC)
        data = data[~data.is_empty]
        if data.empty:
            raise OutlineComparisonError("There are no outlines to compare and no mapped area, "
                                         "so no CRS can be chosen; pass crs=.")
        return CRS.from_user_input(data.estimate_utm_crs())
    measure = CRS.from_user_input(crs)
    if not measure.is_projected or measure.axis_info[0].unit_name not in ("metre", "meter"):
        raise OutlineComparisonError(f"The CRS to measure in must be projected in metres; got "
                                     f"{measure.to_string()}. Use e.g. the scene's UTM zone.")
    return measure


def _equal_area_crs(series: list[gpd.GeoSeries]) -> CRS:
    """Lambert azimuthal equal-area on WGS 84 centred on the data."""
    bounds = np.array([s.to_crs(GEOGRAPHIC).total_bounds for s in series if len(s)
                       and not s.is_empty.all()])
    if not len(bounds):
        return CRS.from_proj4("+proj=laea +lat_0=0 +lon_0=0 +datum=WGS84 +units=m +no_defs")
    lon = (np.nanmin(bounds[:, 0]) + np.nanmax(bounds[:, 2])) / 2.0
    lat = (np.nanmin(bounds[:, 1]) + np.nanmax(bounds[:, 3])) / 2.0
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 "
                          "+units=m +no_defs")


def mapped_area_from_grid(grid: Grid, valid: np.ndarray | None = None) -> gpd.GeoSeries:
    """The area a raster maps, as one (multi)polygon in the grid's CRS.

    Args:
        grid: the raster's grid.
        valid: ``(H, W)`` pixels that were mapped (e.g. the held-out part of a scene, or the
            pixels with data); default all, giving the grid's footprint.

    Returns:
        A one-row GeoSeries; its edges have a vertex at every pixel corner, so that they stay
        on the pixel edges when reprojected.
    """
    pixel = min(abs(grid.transform.a), abs(grid.transform.e))
    if valid is None:
        footprint = shapely.segmentize(shapely.box(*grid.bounds), pixel)
        return gpd.GeoSeries([footprint], crs=grid.crs)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (grid.height, grid.width):
        raise OutlineComparisonError(f"valid {valid.shape} must have the grid's shape "
                                     f"{(grid.height, grid.width)}.")
    shapes = rasterio.features.shapes(valid.astype(np.uint8), mask=valid,
                                      transform=grid.transform, connectivity=4)
    polygons = [shapely.geometry.shape(geometry) for geometry, _ in shapes]
    union = shapely.union_all(polygons) if polygons else shapely.Polygon()
    return gpd.GeoSeries([shapely.segmentize(union, pixel)], crs=grid.crs)


# --------------------------------------------------------------------------------------------
# Outline distances


def _lines(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LineStrings of every geometry and the index of the geometry each comes from.

    Points (from intersections that only touch) and zero-length lines are dropped.
    """
    parts, index = shapely.get_parts(geometries, return_index=True)
    if len(parts):
        # intersections can give GeometryCollections of lines and points: split once more
        parts, inner = shapely.get_parts(parts, return_index=True)
        index = index[inner]
    keep = np.isin(shapely.get_type_id(parts), (1, 2)) & (shapely.length(parts) > 0)
    return parts[keep], index[keep]


def _sample(lines: np.ndarray, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``spacing_m`` or less along ``lines`` and the line each comes from.

    Every line is cut into ``ceil(length / spacing_m)`` equal pieces, sampled at their midpoints.
    Vectorised over all lines at once (``shapely.line_interpolate_point`` walks a line from its
    start for every point, which is quadratic for long outlines).
    """
    coords, index = shapely.get_coordinates(lines, return_index=True)
    if not len(coords):
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    start, end = coords[:-1], coords[1:]
    same = index[1:] == index[:-1]
    step = np.where(same, np.hypot(*(end - start).T), 0.0)
    travelled = np.concatenate([[0.0], np.cumsum(step)])  # distance at every vertex
    first = np.searchsorted(index, np.arange(len(lines)))  # first vertex of every line
    last = np.searchsorted(index, np.arange(len(lines)), side="right") - 1
    lengths = travelled[last] - travelled[first]
    # (a hair less than the ratio, so that reprojection noise does not add a piece)
    pieces = np.ceil(lengths / spacing_m * (1.0 - 1e-9))
    counts = np.where(lengths > 0, np.maximum(pieces, 1), 0)
    counts = counts.astype(np.int64)
    owner = np.repeat(np.arange(len(lines)), counts)
    offset = np.cumsum(counts) - counts
    piece = np.arange(counts.sum()) - np.repeat(offset, counts) + 0.5
    position = travelled[first][owner] + piece * (lengths / np.maximum(counts, 1))[owner]
    segment = np.searchsorted(travelled, position, side="right") - 1
    segment = np.clip(segment, first[owner], last[owner] - 1)
    fraction = (position - travelled[segment]) / np.where(step[segment] > 0, step[segment], 1.0)
    xy = start[segment] + np.clip(fraction, 0.0, 1.0)[:, None] * (end - start)[segment]
    return shapely.points(xy), owner


def _nearest_distances(points: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Distance from every point to the nearest of ``lines`` (exact, via their segments)."""
    coords, index = shapely.get_coordinates(lines, return_index=True)
    same = index[1:] == index[:-1]
    segments = shapely.linestrings(np.stack([coords[:-1][same], coords[1:][same]], axis=1))
    tree = shapely.STRtree(segments)
    _, distances = tree.query_nearest(points, return_distance=True, all_matches=False)
    return distances


def outline_distances(predicted: Geometry, reference: Geometry,
                      spacing_m: float = DEFAULT_SPACING_M,
                      within: Geometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (m) between the outlines of two polygons in a projected CRS, both ways.

    Args:
        predicted: a (multi)polygon; its exterior and interior rings are its outline.
        reference: the other (multi)polygon.
        spacing_m: largest distance between samples along an outline.
        within: compare only the outlines inside this polygon (already shrunk by the edge
            tolerance, see the module docstring); default the whole outlines.

    Returns:
        Distances of the predicted samples to the reference outline, and of the reference
        samples to the predicted outline; both empty when either outline is empty. Pooled
        (concatenated), they give the symmetric mean and percentiles.
    """
    pairs, _ = _distances(np.array([predicted, reference], dtype=object), np.array([0, 0]),
                          np.array([0, 1]), 1, spacing_m, within)
    return pairs[0]


def _distances(geometries: np.ndarray, row: np.ndarray, side: np.ndarray, n_rows: int,
               spacing_m: float, within: Geometry | None
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Distances per row, both ways, and the outline length per (row, side).

    The distances of a row are (predicted to reference, reference to predicted).
    ``geometries[i]`` is the polygon of row ``row[i]``, side ``side[i]`` (0 predicted,
    1 reference).
    """
    outlines = shapely.boundary(geometries)
    if within is not None:
        shapely.prepare(within)
        inside = shapely.contains_properly(within, outlines)
        clipped = outlines.copy()
        todo = ~inside & ~shapely.is_empty(outlines)
        clipped[todo] = shapely.intersection(outlines[todo], within)
        outlines = clipped
    lines, owner = _lines(outlines)
    lengths = np.zeros((n_rows, 2))
    np.add.at(lengths, (row[owner], side[owner]), shapely.length(lines))
    points, of_line = _sample(lines, spacing_m)
    point_row, point_side = row[owner][of_line], side[owner][of_line]
    line_row, line_side = row[owner], side[owner]
    order = np.lexsort((point_side, point_row))
    points, point_row, point_side = points[order], point_row[order], point_side[order]
    starts = np.searchsorted(point_row, np.arange(n_rows + 1))
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for r in range(n_rows):
        own = slice(starts[r], starts[r + 1])
        sides = point_side[own]
        result = []
        for mine in (0, 1):
            targets = lines[(line_row == r) & (line_side == 1 - mine)]
            mine_points = points[own][sides == mine]
            if not len(targets) or not len(mine_points):
                result = []
                break
            result.append(_nearest_distances(mine_points, targets))
        pairs.append((result[0], result[1]) if result else (np.empty(0), np.empty(0)))
    return pairs, lengths


# --------------------------------------------------------------------------------------------
# The table


def compare_outlines(predicted: gpd.GeoDataFrame, reference: gpd.GeoDataFrame,
                     mapped_area: MappedArea | None = None, *,
                     mapped_area_crs: object | None = None, crs: object | None = None,
                     spacing_m: float = DEFAULT_SPACING_M,
                     edge_tolerance_m: float = DEFAULT_EDGE_TOLERANCE_M) -> pd.DataFrame:
    """Compare predicted glacier outlines with reference outlines, glacier by glacier.

    Glaciers are matched by id (``rgi_id``; RGI 6.0 ``RGIId`` also accepted). Predicted
    glaciers with an empty id (new glaciers) each get a row of their own. See the module
    docstring for the measures and the columns.

    Args:
        predicted: predicted per-glacier polygons, e.g. from
            :func:`glacier_mapping.inventory.inventory_layer` (``rgi_id``, ``glac_name``), any
            CRS.
        reference: reference outlines with RGI 6.0 (``RGIId``, ``Name``) or RGI 7.0
            (``rgi_id``, ``glac_name``) columns, any CRS. Invalid geometries are repaired with
            ``shapely.make_valid``.
        mapped_area: the area that was mapped (GeoSeries/GeoDataFrame with a CRS, or a shapely
            geometry with ``mapped_area_crs``); its parts are merged. Default: no clipping.
        mapped_area_crs: CRS of ``mapped_area`` when it is a bare shapely geometry.
        crs: projected CRS (metres) to measure distances and clip in; default the UTM zone of
            the centre of the mapped area, else of the outlines (geopandas
            ``estimate_utm_crs``).
        spacing_m: largest distance (m) between samples along an outline; about a third of the
            pixel size or less.
        edge_tolerance_m: outlines closer than this (m) to the edge of the mapped area are left
            out (see the module docstring); 0 keeps them, up to rounding.

    Returns:
        One row per reference glacier overlapping the mapped area (in the reference's order),
        then one per predicted glacier without a reference outline; columns :data:`COLUMNS`.

    Raises:
        OutlineComparisonError: for outlines without an id column or CRS, a mapped area without
            a CRS, a geographic ``crs``, or a non-positive spacing.
    """
    if not spacing_m > 0:
        raise OutlineComparisonError(f"spacing_m must be > 0; got {spacing_m}.")
    if not edge_tolerance_m >= 0:
        raise OutlineComparisonError(f"edge_tolerance_m must be >= 0; got {edge_tolerance_m}.")
    area_series = None if mapped_area is None else _as_series(mapped_area, mapped_area_crs)
    for frame, what in ((predicted, "predicted"), (reference, "reference")):
        if isinstance(frame, gpd.GeoDataFrame) and frame.crs is None:
            raise OutlineComparisonError(f"The {what} outlines have no CRS; set it "
                                         "(GeoDataFrame.set_crs) first.")
    sources = ([area_series] if area_series is not None
               else [s.geometry for s in (reference, predicted) if isinstance(s, gpd.GeoDataFrame)])
    measure = _measure_crs(crs, sources)
    pred = _normalise(predicted, measure, "predicted")
    ref = _normalise(reference, measure, "reference")

    area = within = None
    if area_series is not None:
        area = _polygonal(shapely.union_all(area_series.to_crs(measure).values))
        within = area if edge_tolerance_m == 0 else shapely.buffer(area, -edge_tolerance_m)
        shapely.prepare(area)

    def clip(geometries: np.ndarray) -> np.ndarray:
        if area is None:
            return geometries
        clipped = geometries.copy()
        cut = ~shapely.contains_properly(area, geometries)
        clipped[cut] = [_polygonal(g) for g in shapely.intersection(geometries[cut], area)]
        return clipped

    ref_clipped = clip(ref.geometry.to_numpy())
    pred_clipped = clip(pred.geometry.to_numpy())
    ref_keep = ~shapely.is_empty(ref_clipped) & (shapely.area(ref_clipped) > 0)
    pred_keep = ~shapely.is_empty(pred_clipped) & (shapely.area(pred_clipped) > 0)

    ref_ids = ref["rgi_id"].to_numpy(object)
    pred_ids = pred["rgi_id"].to_numpy(object)
    ref_position = {ident: i for i, ident in enumerate(ref_ids) if ident}
    kept_ref = set(ref_ids[ref_keep])
    rows: list[tuple[int | None, int | None]] = []  # (reference index, predicted index)
    pred_of_id = {ident: i for i, ident in enumerate(pred_ids) if ident and pred_keep[i]}
    for i in np.flatnonzero(ref_keep):
        rows.append((int(i), pred_of_id.get(ref_ids[i])))
    for j in np.flatnonzero(pred_keep):
        ident = pred_ids[j]
        if ident in kept_ref and ident:
            continue
        # a prediction for a reference glacier that lies outside the mapped area
        rows.append((ref_position.get(ident) if ident else None, int(j)))

    n = len(rows)
    ref_index = np.array([-1 if r is None else r for r, _ in rows], dtype=np.int64)
    pred_index = np.array([-1 if p is None else p for _, p in rows], dtype=np.int64)
    has_ref, has_pred = ref_index >= 0, pred_index >= 0

    equal_area = _equal_area_crs([gpd.GeoSeries(ref_clipped[ref_keep], crs=measure),
                                  gpd.GeoSeries(pred_clipped[pred_keep], crs=measure)])

    def areas_km2(geometries: np.ndarray) -> np.ndarray:
        if not len(geometries):
            return np.zeros(0)
        dense = shapely.segmentize(geometries, 10 * spacing_m)
        return gpd.GeoSeries(dense, crs=measure).to_crs(equal_area).area.to_numpy() / 1e6

    reference_area = np.full(n, np.nan)
    reference_area[has_ref] = areas_km2(ref_clipped[ref_index[has_ref]])
    predicted_area = np.zeros(n)
    predicted_area[has_pred] = areas_km2(pred_clipped[pred_index[has_pred]])

    geometries = np.concatenate([pred.geometry.to_numpy()[pred_index[has_pred]],
                                 ref.geometry.to_numpy()[ref_index[has_ref]]])
    row = np.concatenate([np.flatnonzero(has_pred), np.flatnonzero(has_ref)])
    side = np.concatenate([np.zeros(has_pred.sum(), dtype=np.int64),
                           np.ones(has_ref.sum(), dtype=np.int64)])
    pairs, lengths = _distances(geometries, row, side, n, spacing_m, within)
    pooled = [np.concatenate(pair) for pair in pairs]

    names = np.array([ref["glac_name"].iat[r] if r >= 0 and ref["glac_name"].iat[r]
                      else (pred["glac_name"].iat[p] if p >= 0 else "")
                      for r, p in zip(ref_index, pred_index, strict=True)], dtype=object)
    ids = np.array([ref_ids[r] if r >= 0 else pred_ids[p]
                    for r, p in zip(ref_index, pred_index, strict=True)], dtype=object)
    match = np.where(has_ref & has_pred, "both",
                     np.where(has_ref, "reference_only", "predicted_only")).astype(object)
    difference = predicted_area - reference_area
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = np.where(reference_area > 0, 100.0 * difference / reference_area, np.nan)
    mean = np.array([float(d.mean(dtype=np.float64)) if len(d) else np.nan for d in pooled])
    p95 = np.array([float(np.percentile(d, 95)) if len(d) else np.nan for d in pooled])
    return pd.DataFrame({
        "rgi_id": ids, "glac_name": names, "match": match,
        "reference_area_km2": reference_area, "predicted_area_km2": predicted_area,
        "area_difference_km2": difference, "area_deviation_pct": deviation,
        "mean_distance_m": mean, "p95_distance_m": p95,
        "reference_outline_m": lengths[:, 1], "predicted_outline_m": lengths[:, 0],
        "distances_m": pd.Series(pooled, dtype=object),
    }, columns=COLUMNS)


def summary(table: pd.DataFrame, min_area_km2: float = DEFAULT_MIN_AREA_KM2) -> dict[str, float]:
    """Scene-level numbers of a :func:`compare_outlines` table.

    Only glaciers with a reference area of at least ``min_area_km2`` inside the mapped area
    count (predicted glaciers without a reference are reported as an area only).

    Returns:
        ``n_glaciers`` (counted), ``n_with_distance`` (of those, with both outlines),
        ``median_abs_area_deviation_pct``, ``mean_abs_area_deviation_pct``,
        ``median_mean_distance_m`` (median of the per-glacier mean distances),
        ``pooled_p95_distance_m`` (95th percentile of all their pooled distances; NaN when the
        table has no ``distances_m`` column), ``reference_area_km2``, ``predicted_area_km2``
        (sums over the counted glaciers), ``area_bias_pct``
        (``100 * (sum predicted - sum reference) / sum reference``) and
        ``unmatched_predicted_area_km2`` (predicted glaciers without a reference outline).
    """
    reference = table["reference_area_km2"].to_numpy(dtype=np.float64)
    kept = table[np.nan_to_num(reference, nan=-1.0) >= min_area_km2]
    deviation = kept["area_deviation_pct"].abs().to_numpy(dtype=np.float64)
    means = kept["mean_distance_m"].to_numpy(dtype=np.float64)
    pooled_p95 = math.nan
    if "distances_m" in kept.columns:
        arrays = [np.asarray(d) for d in kept["distances_m"] if d is not None and len(d)]
        if arrays:
            pooled_p95 = float(np.percentile(np.concatenate(arrays), 95))
    total_reference = float(kept["reference_area_km2"].sum())
    total_predicted = float(kept["predicted_area_km2"].sum())
    unmatched = table["match"] == "predicted_only" if "match" in table.columns else (
        table["reference_area_km2"].isna())

    def nan_stat(function: Callable[[np.ndarray], float], values: np.ndarray) -> float:
        values = values[np.isfinite(values)]
        return float(function(values)) if len(values) else math.nan

    return {
        "n_glaciers": int(len(kept)),
        "n_with_distance": int(np.isfinite(means).sum()),
        "median_abs_area_deviation_pct": nan_stat(np.median, deviation),
        "mean_abs_area_deviation_pct": nan_stat(np.mean, deviation),
        "median_mean_distance_m": nan_stat(np.median, means),
        "pooled_p95_distance_m": pooled_p95,
        "reference_area_km2": total_reference,
        "predicted_area_km2": total_predicted,
        "area_bias_pct": (100.0 * (total_predicted - total_reference) / total_reference
                          if total_reference > 0 else math.nan),
        "unmatched_predicted_area_km2": float(table.loc[unmatched, "predicted_area_km2"].sum()),
    }
