"""Per-glacier area deviation and outline distance between predicted and reference outlines."""

import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from glacier_mapping.data.scenes import Grid
from glacier_mapping.inventory import inventory_layer, split_by_inventory
from glacier_mapping.outline_comparison import (
    COLUMNS,
    OutlineComparisonError,
    compare_outlines,
    mapped_area_from_grid,
    outline_distances,
    summary,
)

UTM = "EPSG:32632"
X0, Y0 = 500_000.0, 5_100_000.0  # on the central meridian of UTM 32N
#: Plane areas in UTM at the central meridian are k0² = 0.9996² times the ellipsoidal ones.
SCALE = 0.9996**2
SIDE, SHIFT = 1000.0, 30.0


def square(x=0.0, y=0.0, side=SIDE):
    return shapely.box(X0 + x, Y0 + y, X0 + x + side, Y0 + y + side)


def rgi6(geometries, ids=None, names=None, crs=UTM):
    ids = ids or [f"RGI60-11.{i:05d}" for i in range(1, len(geometries) + 1)]
    names = names or [f"Glacier {i}" for i in range(len(geometries))]
    return gpd.GeoDataFrame({"RGIId": ids, "Name": names}, geometry=geometries, crs=crs)


def predicted(geometries, ids, crs="EPSG:4326"):
    """A layer like inventory_layer's: RGI 7.0 names, WGS 84."""
    frame = gpd.GeoDataFrame({"rgi_id": ids, "glac_name": [""] * len(ids)},
                             geometry=geometries, crs=UTM)
    return frame.to_crs(crs)


def test_a_square_shifted_by_30_m():
    table = compare_outlines(predicted([square(SHIFT)], ["RGI60-11.00001"]), rgi6([square()]))
    assert list(table.columns) == COLUMNS and len(table) == 1
    row = table.iloc[0]
    assert row["rgi_id"] == "RGI60-11.00001" and row["glac_name"] == "Glacier 0"
    assert row["match"] == "both"
    # ellipsoidal (equal-area) areas, not UTM plane areas
    assert row["reference_area_km2"] == pytest.approx(1.0 / SCALE, rel=1e-5)
    assert row["predicted_area_km2"] == pytest.approx(1.0 / SCALE, rel=1e-5)
    assert row["area_deviation_pct"] == pytest.approx(0.0, abs=1e-5)
    # The edges along the shift slide along each other (distance 0 over S - d), the two
    # vertical edges are d apart, and the corners ramp from 0 to d: the mean is exactly d / 2
    # and more than half of the outline is at d, so the 95th percentile is d.
    assert row["mean_distance_m"] == pytest.approx(SHIFT / 2, abs=1e-3)
    assert row["p95_distance_m"] == pytest.approx(SHIFT, abs=1e-3)
    distances = row["distances_m"]
    assert len(distances) == 2 * 400  # 4000 m of outline per side, every 10 m
    at_shift = np.isclose(distances, SHIFT, atol=1e-3).mean()
    assert at_shift == pytest.approx((2 * SIDE - 2 * SHIFT) / (4 * SIDE), abs=0.01)
    assert row["reference_outline_m"] == pytest.approx(4 * SIDE)
    assert row["predicted_outline_m"] == pytest.approx(4 * SIDE, rel=1e-6)


def test_a_square_grown_by_30_m_on_every_side():
    grown = shapely.buffer(square(), SHIFT, join_style="mitre")
    predicted_side, reference_side = outline_distances(grown, square(), spacing_m=5.0)
    assert len(predicted_side) == 4 * 1060 / 5 and len(reference_side) == 4 * 1000 / 5
    # every reference point is 30 m from the grown outline; the grown corners are farther
    assert np.allclose(reference_side, SHIFT, atol=1e-6)
    assert predicted_side.min() == pytest.approx(SHIFT, abs=1e-6)
    # the sample nearest a grown corner is 2.5 m from it (midpoints of 5 m pieces)
    assert predicted_side.max() == pytest.approx(math.hypot(SHIFT, SHIFT - 2.5), abs=1e-6)
    table = compare_outlines(predicted([grown], ["A"], crs=UTM), rgi6([square()], ids=["A"]))
    expected = 100 * ((SIDE + 2 * SHIFT) ** 2 - SIDE**2) / SIDE**2
    assert table.loc[0, "area_deviation_pct"] == pytest.approx(expected, rel=1e-5)


def test_holes_are_outlines():
    hole = square(400, 400, 200)
    with_hole = shapely.difference(square(), hole)
    table = compare_outlines(predicted([square()], ["A"]), rgi6([with_hole], ids=["A"]))
    row = table.iloc[0]
    # the filled hole adds 0.04 km² to 0.96 km²
    assert row["area_deviation_pct"] == pytest.approx(100 * 0.04 / 0.96, rel=1e-5)
    assert row["reference_outline_m"] == pytest.approx(4800.0)
    assert row["predicted_outline_m"] == pytest.approx(4000.0, rel=1e-6)
    # the outer rings coincide (0 m); the hole's 80 samples are 400 m from the outer ring
    assert row["mean_distance_m"] == pytest.approx(80 * 400 / 880, rel=1e-5)
    assert row["p95_distance_m"] == pytest.approx(400.0, rel=1e-5)
    same = compare_outlines(predicted([with_hole], ["A"]), rgi6([with_hole], ids=["A"]))
    assert same.loc[0, "mean_distance_m"] == pytest.approx(0.0, abs=1e-6)
    assert same.loc[0, "p95_distance_m"] == pytest.approx(0.0, abs=1e-6)
    assert same.loc[0, "area_deviation_pct"] == pytest.approx(0.0, abs=1e-6)


def test_missed_and_new_glaciers():
    reference = rgi6([square(), square(2000)], ids=["A", "B"], names=["Alpha", ""])
    layer = predicted([square(), square(4000), square(6000, side=500)], ["A", "", "Z"])
    table = compare_outlines(layer, reference)
    assert list(table["rgi_id"]) == ["A", "B", "", "Z"]
    assert list(table["match"]) == ["both", "reference_only", "predicted_only",
                                    "predicted_only"]
    missed = table.iloc[1]
    assert missed["predicted_area_km2"] == 0.0
    assert missed["area_deviation_pct"] == pytest.approx(-100.0)
    assert math.isnan(missed["mean_distance_m"]) and math.isnan(missed["p95_distance_m"])
    assert len(missed["distances_m"]) == 0
    new = table.iloc[2]
    assert math.isnan(new["reference_area_km2"]) and math.isnan(new["area_deviation_pct"])
    assert math.isnan(new["mean_distance_m"])
    assert new["predicted_area_km2"] == pytest.approx(1.0 / SCALE, rel=1e-5)
    numbers = summary(table)
    assert numbers["n_glaciers"] == 2 and numbers["n_with_distance"] == 1
    assert numbers["median_abs_area_deviation_pct"] == pytest.approx(50.0, abs=1e-3)
    assert numbers["area_bias_pct"] == pytest.approx(-50.0, abs=1e-3)
    assert numbers["pooled_p95_distance_m"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["unmatched_predicted_area_km2"] == pytest.approx(1.25 / SCALE, rel=1e-5)
    # a table read back from CSV has no distance samples: no pooled percentile
    assert math.isnan(summary(table.drop(columns="distances_m"))["pooled_p95_distance_m"])
    assert summary(table, min_area_km2=2.0)["n_glaciers"] == 0


def test_the_edge_of_the_mapped_area_is_not_an_outline():
    reference = rgi6([shapely.box(X0, Y0, X0 + 2000, Y0 + 1000), square(5000)],
                     ids=["A", "OUT"])
    mapped = shapely.box(X0 - 500, Y0 - 500, X0 + 1000, Y0 + 1500)  # the left half of A
    # a map of the mapped area only: its outline runs along the clip line x = 1000
    exact = predicted([square()], ["A"])
    table = compare_outlines(exact, reference, mapped, mapped_area_crs=UTM)
    assert list(table["rgi_id"]) == ["A"]  # OUT lies outside the mapped area
    row = table.iloc[0]
    assert row["reference_area_km2"] == pytest.approx(1.0 / SCALE, rel=1e-5)
    assert row["area_deviation_pct"] == pytest.approx(0.0, abs=1e-5)
    assert row["mean_distance_m"] == pytest.approx(0.0, abs=1e-6)
    assert row["p95_distance_m"] == pytest.approx(0.0, abs=1e-6)
    # the left edge and the top and bottom edges up to 1 m (the tolerance) from the clip line
    assert row["reference_outline_m"] == pytest.approx(2998.0, abs=1e-3)
    assert row["predicted_outline_m"] == pytest.approx(2998.0, abs=1e-3)
    # a prediction reaching beyond the mapped area is clipped the same way
    wider = shapely.box(X0, Y0, X0 + 1500, Y0 + 1000)
    beyond = compare_outlines(predicted([wider], ["A"]), reference,
                              gpd.GeoSeries([mapped], crs=UTM).to_crs("EPSG:3857"))
    assert beyond.loc[0, "area_deviation_pct"] == pytest.approx(0.0, abs=1e-5)
    assert beyond.loc[0, "p95_distance_m"] == pytest.approx(0.0, abs=1e-3)
    # without the tolerance the clip line counts as predicted outline (up to 500 m away) where
    # it lies exactly on the edge: here in the same CRS; after reprojection rounding decides
    counted = compare_outlines(predicted([square()], ["A"], crs=UTM), reference, mapped,
                               mapped_area_crs=UTM, edge_tolerance_m=0.0)
    assert counted.loc[0, "predicted_outline_m"] == pytest.approx(4000.0, rel=1e-6)
    assert counted.loc[0, "p95_distance_m"] > 300.0


def test_an_inventory_layer_against_its_own_outlines_on_a_held_out_half():
    grid = Grid(CRS.from_epsg(32632), Affine(30.0, 0.0, X0, 0.0, -30.0, Y0), 60, 90)

    def cells(top, bottom, left, right):
        return shapely.box(X0 + left * 30, Y0 - bottom * 30, X0 + right * 30, Y0 - top * 30)

    reference = rgi6([cells(10, 40, 10, 40), cells(10, 40, 40, 70)], ids=["A", "B"])
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[10:40, 10:70] = 1
    held_out = np.zeros((60, 90), dtype=bool)
    held_out[:, :45] = True  # only the left half was mapped
    split = split_by_inventory(mask, grid, reference, max_distance_m=0.0, valid=held_out)
    probability = np.where(held_out, mask.astype(float), np.nan)
    layer = inventory_layer(split, probability, grid, "2021-08-15", block_px=2, samples=10)
    area = mapped_area_from_grid(grid, held_out)
    assert area.iloc[0].area == pytest.approx(60 * 45 * 900.0)
    table = compare_outlines(layer, reference, area)
    assert list(table["rgi_id"]) == ["A", "B"]
    assert np.allclose(table["area_deviation_pct"], 0.0, atol=1e-5)
    assert np.allclose(table["mean_distance_m"], 0.0, atol=1e-6)
    # B is cut by the edge of the held-out half: 5 columns of it, three sides of outline
    assert table.loc[1, "reference_area_km2"] == pytest.approx(30 * 5 * 900 / 1e6 / SCALE,
                                                               rel=1e-5)
    assert table.loc[1, "predicted_outline_m"] == pytest.approx(900 + 2 * 149, abs=1e-3)
    # areas agree with the layer's own (ellipsoidal pixel sums)
    layer_area = layer.set_index("rgi_id").loc[["A", "B"], "area_km2"].to_numpy()
    assert np.allclose(table["predicted_area_km2"], layer_area, rtol=1e-6)
    footprint = mapped_area_from_grid(grid).iloc[0]
    assert footprint.area == pytest.approx(60 * 90 * 900.0)
    assert shapely.equals(footprint, shapely.box(*grid.bounds))


def test_bad_inputs():
    reference = rgi6([square()])
    layer = predicted([square()], ["RGI60-11.00001"])
    with pytest.raises(OutlineComparisonError, match="id column"):
        compare_outlines(layer.rename(columns={"rgi_id": "id"}), reference)
    with pytest.raises(OutlineComparisonError, match="no CRS"):
        compare_outlines(layer, reference.set_crs(None, allow_override=True))
    with pytest.raises(OutlineComparisonError, match="projected in metres"):
        compare_outlines(layer, reference, crs="EPSG:4326")
    with pytest.raises(OutlineComparisonError, match="mapped_area_crs"):
        compare_outlines(layer, reference, square())
    with pytest.raises(OutlineComparisonError, match="spacing_m"):
        compare_outlines(layer, reference, spacing_m=0.0)


# --------------------------------------------------------------------------------------------
# The real RGI 6.0 outlines of the Everest scene


def test_everest_outlines_against_themselves(everest_rgi):
    _, _, grid, outlines = everest_rgi
    table = compare_outlines(outlines, outlines, mapped_area_from_grid(grid))
    assert len(table) == 86 and (table["match"] == "both").all()
    assert np.allclose(table["area_deviation_pct"], 0.0, atol=1e-9)
    assert table["p95_distance_m"].max() < 1e-6
    numbers = summary(table)
    assert numbers["n_glaciers"] == 61
    # 254.6 km² rasterised at pixel centres (README); 253.5 km² as polygons in the scene
    assert numbers["reference_area_km2"] == pytest.approx(253.5, abs=0.5)


def test_everest_outlines_grown_by_30_m(everest_rgi):
    _, _, grid, outlines = everest_rgi
    grown = outlines.to_crs(grid.crs)
    grown["geometry"] = grown.buffer(SHIFT)
    table = compare_outlines(grown, outlines, mapped_area_from_grid(grid))
    assert (table["area_deviation_pct"] > 0).all()
    # every grown point is 30 m from its outline; outline points in narrow inlets are farther
    assert table["mean_distance_m"].min() > SHIFT - 0.1
    assert table["mean_distance_m"].median() == pytest.approx(SHIFT, abs=0.5)
    numbers = summary(table)
    assert numbers["median_mean_distance_m"] == pytest.approx(SHIFT, abs=0.5)
    assert numbers["pooled_p95_distance_m"] == pytest.approx(SHIFT, abs=0.5)
    assert 0 < numbers["area_bias_pct"] < 20


def test_everest_outlines_rasterised_at_30_m(everest_rgi):
    """A perfect map at 30 m: the pixel staircase alone, a quarter to half a pixel."""
    _, mask, grid, outlines = everest_rgi
    split = split_by_inventory(mask, grid, outlines, max_distance_m=0.0)
    layer = inventory_layer(split, mask.astype(float), grid, "2000-10-30", block_px=4,
                            samples=10)
    table = compare_outlines(layer, outlines, mapped_area_from_grid(grid))
    numbers = summary(table)
    assert 0.15 * 30 < numbers["median_mean_distance_m"] < 0.3 * 30
    assert 0.35 * 30 < numbers["pooled_p95_distance_m"] < 0.6 * 30
    assert numbers["median_abs_area_deviation_pct"] < 1.0
    assert abs(numbers["area_bias_pct"]) < 0.5
