"""Per-glacier change between two inventory layers and the per-pixel change raster."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from synthetic_fields import SIZE, draw_truth, landscape, probability

from glacier_mapping.area_uncertainty import bootstrap_areas, choose_block_size
from glacier_mapping.change import (
    CHANGE_NODATA,
    ChangeError,
    change_interval,
    change_raster,
    glacier_change,
)
from glacier_mapping.data.scenes import Grid
from glacier_mapping.inventory import inventory_layer, split_by_inventory, write_layer
from glacier_mapping.pixel_geometry import expand_labels, pixel_areas_km2

X0, Y0, PIXEL = 500_000.0, 5_100_000.0, 30.0
TRANSFORM = Affine(PIXEL, 0.0, X0, 0.0, -PIXEL, Y0)
GRID = Grid(CRS.from_epsg(32632), TRANSFORM, 60, 90)


def cells(top, bottom, left, right):
    return shapely.box(X0 + left * PIXEL, Y0 - bottom * PIXEL, X0 + right * PIXEL,
                       Y0 - top * PIXEL)


def test_intervals_combine_in_quadrature_side_by_side():
    change, low, high = change_interval(10.0, 9.0, 12.0, 8.0, 7.5, 8.4)
    assert change == pytest.approx(-2.0)
    assert low == pytest.approx(-2.0 - np.hypot(0.5, 2.0))
    assert high == pytest.approx(-2.0 + np.hypot(0.4, 1.0))


def layer_of(mask, outlines):
    split = split_by_inventory(mask, GRID, outlines, max_distance_m=60.0)
    p = np.where(mask == 1, 0.95, 0.02)
    return inventory_layer(split, p, GRID, "2020-08-01", block_px=3, samples=300)


def test_change_of_a_synthetic_pair_with_known_truth(tmp_path):
    inventory = gpd.GeoDataFrame(
        {"rgi_id": ["RGI2000-v7.0-G-11-00001", "RGI2000-v7.0-G-11-00002",
                    "RGI2000-v7.0-G-11-00003"], "glac_name": ["Retreating", "Gone", "Steady"]},
        geometry=[cells(5, 25, 5, 40), cells(5, 25, 50, 60), cells(35, 55, 5, 30)],
        crs=GRID.crs.to_wkt())
    before = np.zeros((60, 90), dtype=np.uint8)
    before[5:25, 5:40] = 1
    before[5:25, 50:60] = 1
    before[35:55, 5:30] = 1
    before[40:50, 70:80] = 1  # not in the inventory, on both dates
    after = before.copy()
    after[5:25, 30:40] = 0  # the tongue retreats by 10 columns
    after[5:25, 50:60] = 0  # gone
    after[40:50, 72:82] = 1  # the unnamed glacier moves a little
    after[40:50, 70:72] = 0
    after[30:33, 45:50] = 1  # appears
    layers = [layer_of(mask, inventory) for mask in (before, after)]
    table = glacier_change(*layers)
    files = [write_layer(layer, tmp_path / f"{date}.gpkg") for date, layer in zip(
        ("2000", "2020"), layers, strict=True)]
    from_files = glacier_change(*(gpd.read_file(path) for path in files))
    pd.testing.assert_frame_equal(from_files, table)
    table = table.set_index("glac_name", drop=False)
    pixel = pixel_areas_km2(GRID)[0, 0]
    retreat = table.loc["Retreating"]
    assert retreat.status == "matched" and retreat.matched_by == "rgi_id"
    assert retreat.area_change_km2 == pytest.approx(-200 * pixel, rel=1e-6)
    assert retreat.relative_change == pytest.approx(-200 / 700, rel=1e-6)
    assert retreat.change_low_km2 < retreat.expected_change_km2 < retreat.change_high_km2
    assert retreat.change_high_km2 < 0
    gone = table.loc["Gone"]
    assert gone.status == "vanished" and gone.area_after_km2 == 0.0
    assert gone.area_change_km2 == pytest.approx(-200 * pixel, rel=1e-6)
    assert table.loc["Steady"].area_change_km2 == 0.0
    unnamed = table[table["rgi_id"] == ""].set_index("status")
    assert list(unnamed.index) == ["matched", "appeared"]
    assert unnamed.loc["matched", "matched_by"] == "overlap"
    assert unnamed.loc["matched", "area_change_km2"] == pytest.approx(0.0, abs=1e-9)
    assert unnamed.loc["appeared", "area_after_km2"] == pytest.approx(15 * pixel, rel=1e-6)


def test_layers_without_the_columns_are_refused():
    layer = layer_of(np.ones((60, 90), dtype=np.uint8), None)
    with pytest.raises(ChangeError, match=r"after layer lacks column\(s\) \['area_low_km2'\]"):
        glacier_change(layer, layer.drop(columns="area_low_km2"))


def test_change_interval_coverage_with_correlated_errors():
    """Two dates: glaciers shrink; each date's truth drawn with its own correlated errors."""
    rng = np.random.default_rng(77)
    validation = []
    for _ in range(6):
        p = probability(*landscape(rng))
        validation.append((p, draw_truth(rng, p)))
    block = choose_block_size(np.stack([t - p for p, t in validation]),
                              np.stack([p for p, _ in validation])).block_px
    grid = Grid(CRS.from_epsg(32632), TRANSFORM, SIZE, SIZE)
    areas = pixel_areas_km2(grid)
    hits, changes = [], []
    for pair in range(16):
        shapes, ambiguous = landscape(rng)
        p_before, p_after = probability(shapes, ambiguous, 0.6), probability(shapes, ambiguous,
                                                                             0.75)
        zones = expand_labels(ndimage.label(p_before > 0.5)[0], grid, 100.0)
        truth = [np.bincount(zones.ravel(), weights=(draw_truth(rng, p) * areas).ravel())
                 for p in (p_before, p_after)]
        drawn = [bootstrap_areas(p, zones, areas, block, samples=300, seed=2 * pair + date)
                 for date, p in enumerate((p_before, p_after))]
        (low_1, high_1), (low_2, high_2) = drawn[0].interval(), drawn[1].interval()
        _, low, high = change_interval(drawn[0].expected_km2, low_1, high_1,
                                       drawn[1].expected_km2, low_2, high_2)
        true_change = truth[1][drawn[0].labels] - truth[0][drawn[0].labels]
        hits.extend((true_change >= low) & (true_change <= high))
        changes.extend(true_change)
    coverage = float(np.mean(hits))
    print(f"\n90 % change-interval coverage over {len(hits)} glaciers in 16 pairs: "
          f"{coverage:.3f} ({block} px blocks; mean true change {np.mean(changes):.3f} km2)")
    assert np.mean(changes) < 0
    assert 0.80 <= coverage <= 0.98


def write_classes(path, classes, transform=TRANSFORM, crs="EPSG:32632"):
    with rasterio.open(path, "w", driver="GTiff", height=classes.shape[0],
                       width=classes.shape[1], count=1, dtype="uint8", crs=crs,
                       transform=transform, nodata=255) as dataset:
        dataset.write(classes, 1)
    return path


def test_change_raster_codes_and_areas(tmp_path):
    before = np.zeros((60, 90), dtype=np.uint8)
    before[:, :40] = 1
    after = np.zeros((60, 90), dtype=np.uint8)
    after[:, :30] = 1
    after[:10, 80:] = 1
    after[0, 0] = 255
    first = write_classes(tmp_path / "2000.tif", before)
    second = write_classes(tmp_path / "2020.tif", after)
    areas = change_raster(first, second, tmp_path / "change.tif")
    with rasterio.open(tmp_path / "change.tif") as dataset:
        codes = dataset.read(1)
        assert dataset.dtypes[0] == "uint8" and dataset.nodata == CHANGE_NODATA
        assert dataset.transform == TRANSFORM and dataset.crs.to_epsg() == 32632
    assert codes[0, 0] == CHANGE_NODATA
    assert (codes[1:, :30] == 1).all() and (codes[:, 30:40] == 3).all()
    assert (codes[:10, 80:] == 2).all() and (codes[10:, 40:] == 0).all()
    pixel = pixel_areas_km2(GRID)[0, 0]
    assert areas["lost"] == pytest.approx(600 * pixel, rel=1e-6)
    assert areas["gained"] == pytest.approx(100 * pixel, rel=1e-6)
    assert areas["stable glacier"] == pytest.approx((60 * 30 - 1) * pixel, rel=1e-6)
    assert not list(tmp_path.glob(".change*"))


def test_change_raster_refuses_different_grids(tmp_path):
    first = write_classes(tmp_path / "2000.tif", np.zeros((60, 90), dtype=np.uint8))
    shifted = write_classes(tmp_path / "2020.tif", np.zeros((60, 90), dtype=np.uint8),
                            transform=TRANSFORM @ Affine.translation(1, 0))
    with pytest.raises(ChangeError, match=r"2000\.tif .*2020\.tif .*different grids"):
        change_raster(first, shifted, tmp_path / "change.tif")
    assert not (tmp_path / "change.tif").exists()
