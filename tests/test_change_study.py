"""The change study's truth: inventory from the first date, true areas split as the maps are."""

import numpy as np
import pytest
from rasterio.crs import CRS

from glacier_mapping.change import glacier_change
from glacier_mapping.data.benchmark import write_scene_files
from glacier_mapping.data.regions import REGIONS
from glacier_mapping.data.scenes import Grid
from glacier_mapping.data.synthetic import generate_scene
from glacier_mapping.experiments import change_study
from glacier_mapping.inventory import inventory_layer, split_by_inventory


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One synthetic area at two dates 30 years apart, written as scene folders."""
    root = tmp_path_factory.mktemp("pair")
    region = REGIONS["ALP"]
    scenes = [generate_scene(region, 256, 11, year) for year in (region.year, region.year + 30)]
    grid = Grid(CRS.from_user_input(scenes[0].crs), scenes[0].transform, 256, 256)
    for scene in scenes:
        write_scene_files(scene, root / scene.date, "change")
    return scenes, grid, root


def perfect_layer(scene, grid, inventory):
    """The inventory layer of a map equal to the truth (probability 0 or 1)."""
    split = split_by_inventory(scene.labels, grid, inventory)
    return inventory_layer(split, scene.labels.astype(float), grid, scene.date, block_px=8)


def test_the_inventory_is_the_first_dates_glaciers(pair):
    scenes, grid, _ = pair
    inventory = change_study.truth_inventory(scenes[0].labels, grid, "ALP")
    assert len(inventory) > 3 and inventory["rgi_id"].is_unique
    assert inventory["rgi_id"].str.match(r"SYN-ALP-\d{5}$").all()
    assert inventory.crs == grid.crs and inventory.is_valid.all()
    pixel_km2 = abs(grid.transform.a * grid.transform.e) / 1e6
    assert inventory.area.sum() / 1e6 == pytest.approx(scenes[0].labels.sum() * pixel_km2)


def test_a_perfect_map_has_no_error_and_covers_area_and_change(pair):
    scenes, grid, root = pair
    inventory = change_study.truth_inventory(scenes[0].labels, grid, "ALP")
    truth = [change_study.true_areas(root / s.date / "reference.tif", inventory) for s in scenes]
    assert truth[1]["true_area_km2"].sum() < truth[0]["true_area_km2"].sum()  # retreat
    layers = [perfect_layer(scene, grid, inventory) for scene in scenes]
    for layer, true in zip(layers, truth, strict=True):
        table = change_study.area_coverage(layer, true)
        mapped = table[table["true_area_km2"] > 0]
        np.testing.assert_allclose(mapped["area_km2"], mapped["true_area_km2"], rtol=1e-6)
        np.testing.assert_allclose(mapped["error_km2"], 0.0, atol=1e-9)
        assert mapped["covered"].all()
    change = change_study.change_coverage(glacier_change(*layers), truth[0], truth[1])
    both = change[change["status"] == "matched"]
    np.testing.assert_allclose(both["area_change_km2"], both["true_change_km2"], atol=1e-9)
    summary = change_study.coverage_summary(both, both["true_area_km2_before"], "change")
    assert summary["coverage"] == 1.0 and summary["glaciers"] > 0


def test_a_map_that_misses_a_glacier_counts_it_as_not_covered(pair):
    scenes, grid, root = pair
    inventory = change_study.truth_inventory(scenes[0].labels, grid, "ALP")
    truth = change_study.true_areas(root / scenes[0].date / "reference.tif", inventory)
    layer = perfect_layer(scenes[0], grid, inventory)
    largest = truth.sort_values("true_area_km2").iloc[-1]["rgi_id"]
    table = change_study.area_coverage(layer[layer["rgi_id"] != largest], truth)
    row = table.set_index("rgi_id").loc[largest]
    assert row["area_km2"] == 0.0 and not row["covered"]
    summary = change_study.coverage_summary(table, table["true_area_km2"], "area")
    assert summary["covered"] == summary["glaciers"] - 1


def test_bad_study_parameters_are_refused():
    with pytest.raises(ValueError, match="region='XX'"):
        change_study.change_scenes(None, "XX", 10)
    with pytest.raises(ValueError, match="years_apart=0"):
        change_study.change_scenes(None, "ALP", 0)


def test_a_glacier_gone_in_truth_and_map_is_covered_with_zero_area(pair):
    scenes, grid, root = pair
    inventory = change_study.truth_inventory(scenes[0].labels, grid, "ALP")
    truth = change_study.true_areas(root / scenes[1].date / "reference.tif", inventory)
    layer = perfect_layer(scenes[1], grid, inventory)
    table = change_study.area_coverage(layer, truth).set_index("rgi_id")
    gone = table[table["true_area_km2"] == 0]
    assert len(gone) and (gone[["area_km2", "area_low_km2", "area_high_km2"]] == 0).all().all()
    assert gone["covered"].all()
