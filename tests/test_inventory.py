"""Splitting a glacier mask by inventory outlines and the per-glacier layer."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from glacier_mapping.data.scenes import Grid
from glacier_mapping.inventory import (
    InventoryError,
    inventory_layer,
    split_by_inventory,
    write_layer,
)
from glacier_mapping.pixel_geometry import pixel_areas_km2
from glacier_mapping.registry import RealSceneNotAvailable, fetch

X0, Y0, PIXEL = 500_000.0, 5_100_000.0, 30.0
GRID = Grid(CRS.from_epsg(32632), Affine(PIXEL, 0.0, X0, 0.0, -PIXEL, Y0), 60, 90)
IDS = ["RGI60-11.00001", "RGI60-11.00002"]


def cells(top, bottom, left, right):
    """The rectangle covering pixel rows top..bottom-1 and columns left..right-1."""
    return shapely.box(X0 + left * PIXEL, Y0 - bottom * PIXEL, X0 + right * PIXEL,
                       Y0 - top * PIXEL)


def ice_complex():
    """One ice body over two outlines, a nunatak, a fringe west of the first and a far blob."""
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[10:40, 5:70] = 1  # outlines cover columns 10-69; columns 5-9 lie west of them
    mask[20:25, 20:25] = 0  # nunatak inside the first outline
    mask[50:55, 80:86] = 1  # far from both outlines
    mask[0, 0] = 255  # nodata is not glacier
    return mask


def rgi6(crs="EPSG:4326"):
    frame = gpd.GeoDataFrame(
        {"RGIId": IDS, "GLIMSId": ["G009000E46000N", None], "Name": ["Alpha Glacier", None],
         "Area": [0.81, 0.81]},
        geometry=[cells(10, 40, 10, 40), cells(10, 40, 40, 70)], crs=GRID.crs.to_wkt())
    return frame.to_crs(crs)


def rgi7(crs="EPSG:3857"):
    return rgi6(crs).rename(columns={"RGIId": "rgi_id", "GLIMSId": "glims_id",
                                     "Name": "glac_name", "Area": "area_km2"})


def test_an_ice_complex_is_split_by_two_outlines():
    split = split_by_inventory(ice_complex(), GRID, rgi6(), max_distance_m=100.0)
    assert split.inventory == "RGI 6.0" and split.notes == []
    labels, table = split.labels, split.glaciers.set_index("label")
    assert list(table.loc[[1, 2], "rgi_id"]) == IDS
    assert list(table.loc[[1, 2], "glac_name"]) == ["Alpha Glacier", ""]
    assert (labels[10:40, 10:40][ice_complex()[10:40, 10:40] == 1] == 1).all()
    assert (labels[10:40, 40:70] == 2).all()
    # 30, 60 and 90 m from the nearest pixel inside the first outline: given to it
    assert (labels[10:40, 7:10] == 1).all()
    # 120 and 150 m away, and the far blob: new unnamed glaciers
    fringe, blob = labels[10, 5], labels[50, 80]
    assert fringe > 2 and blob > 2 and fringe != blob
    assert (labels[10:40, 5:7] == fringe).all() and (labels[50:55, 80:86] == blob).all()
    assert table.loc[fringe, "origin"] == "new" and table.loc[fringe, "rgi_id"] == ""
    assert labels[0, 0] == 0 and (labels[20:25, 20:25] == 0).all()
    assert table.loc[1, "pixels"] == 30 * 30 - 25 + 30 * 3
    pixel = pixel_areas_km2(GRID)[0, 0]
    assert table.loc[1, "inventory_area_km2"] == pytest.approx(900 * pixel, rel=1e-6)
    assert np.isnan(table.loc[fringe, "inventory_area_km2"])


def test_ice_between_outlines_goes_to_the_nearer_one():
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[10:40, 10:70] = 1
    outlines = gpd.GeoDataFrame(
        {"RGIId": IDS, "Name": ["A", "B"]},
        geometry=[cells(10, 40, 10, 40), cells(10, 40, 46, 70)], crs=GRID.crs.to_wkt())
    labels = split_by_inventory(mask, GRID, outlines, max_distance_m=1000.0).labels
    # the gap is columns 40-45: 40-42 are nearer the first outline, 43-45 the second
    assert (labels[10:40, 40:43] == 1).all() and (labels[10:40, 43:46] == 2).all()


def test_rgi7_columns_in_another_crs_give_the_same_split():
    six = split_by_inventory(ice_complex(), GRID, rgi6("EPSG:4326"), 100.0)
    seven = split_by_inventory(ice_complex(), GRID, rgi7("EPSG:3857"), 100.0)
    assert seven.inventory == "RGI 7.0"
    np.testing.assert_array_equal(six.labels, seven.labels)
    assert list(seven.glaciers["glims_id"][:2]) == ["G009000E46000N", ""]


def test_outlines_without_rgi_columns_or_crs_are_refused():
    other = rgi6().rename(columns={"RGIId": "id", "Name": "name"})
    with pytest.raises(InventoryError, match=r"columns \['id', 'GLIMSId', 'name'.*RGIId.*rgi_id"):
        split_by_inventory(ice_complex(), GRID, other)
    with pytest.raises(InventoryError, match="no CRS"):
        split_by_inventory(ice_complex(), GRID, rgi6().set_crs(None, allow_override=True))
    with pytest.raises(InventoryError, match="grid's shape"):
        split_by_inventory(ice_complex()[:10], GRID, rgi6())


def test_an_invalid_outline_is_repaired_with_a_note():
    outlines = rgi6(GRID.crs.to_wkt())
    x0, x1 = X0 + 10 * PIXEL, X0 + 40 * PIXEL
    y0, y1 = Y0 - 40 * PIXEL, Y0 - 10 * PIXEL
    # the first outline with a zero-width spike (a ring self-intersection)
    spiked = shapely.Polygon([(x0, y0), (x1, y0), (x1, y1), (x0 + 300, y1), (x0 + 300, y1 + 200),
                              (x0 + 300, y1), (x0, y1)])
    assert not spiked.is_valid
    outlines.loc[0, "geometry"] = spiked
    split = split_by_inventory(ice_complex(), GRID, outlines, 100.0)
    assert len(split.notes) == 1
    note = split.notes[0]
    assert "1 of 2 outlines were invalid as given" in note and IDS[0] in note
    assert "make_valid" in note
    reference = split_by_inventory(ice_complex(), GRID, rgi6(), 100.0)
    np.testing.assert_array_equal(split.labels, reference.labels)


def tilted_dem():
    """Elevation rising 0.1 m per metre eastwards: slope atan(0.1), facing west."""
    east = (np.arange(90) + 0.5) * PIXEL
    return np.broadcast_to(1000.0 + 0.1 * east, (60, 90)).copy()


def test_layer_columns_geometry_and_dem_statistics(tmp_path):
    mask = ice_complex()
    split = split_by_inventory(mask, GRID, rgi6(), 100.0)
    probability = np.where(mask == 1, 0.9, 0.05)
    probability[0, 0] = np.nan
    layer = inventory_layer(split, probability, GRID, "2021-08-15", block_px=4,
                            dem=tilted_dem(), samples=300, seed=3)
    assert layer.crs.to_epsg() == 4326
    assert list(layer.columns) == [
        "rgi_id", "glims_id", "glac_name", "src_date", "cenlon", "cenlat", "utm_zone",
        "area_km2", "zmin_m", "zmax_m", "zmed_m", "zmean_m", "slope_deg", "aspect_deg",
        "mean_confidence", "expected_area_km2", "area_low_km2", "area_high_km2",
        "inventory_area_km2", "area_change_km2", "label", "geometry"]
    assert len(layer) == 4 and layer.is_valid.all()
    first = layer.set_index("rgi_id").loc[IDS[0]]
    assert first.geometry.geom_type == "Polygon" and len(first.geometry.interiors) == 1
    assert first.src_date == "2021-08-15" and first.utm_zone == 32
    assert first.geometry.contains(shapely.Point(first.cenlon, first.cenlat))
    pixel = pixel_areas_km2(GRID)[0, 0]
    assert first.area_km2 == pytest.approx((900 - 25 + 90) * pixel, rel=1e-6)
    assert first.area_change_km2 == pytest.approx(65 * pixel, rel=1e-6)
    assert first.mean_confidence == pytest.approx(0.9)
    assert first.area_low_km2 < first.expected_area_km2 < first.area_high_km2
    # the WGS 84 polygon has the pixels' area on the ellipsoid
    geodesic = abs(gpd.GeoSeries([first.geometry], crs=4326).to_crs("EPSG:6933").area[0]) / 1e6
    assert geodesic == pytest.approx(first.area_km2, rel=1e-3)
    assert first.slope_deg == pytest.approx(np.degrees(np.arctan(0.1)), rel=1e-6)
    assert first.aspect_deg == pytest.approx(270.0)
    east = (np.arange(90) + 0.5) * PIXEL
    assert first.zmin_m == pytest.approx(1000 + 0.1 * east[7])
    assert first.zmax_m == pytest.approx(1000 + 0.1 * east[39])
    path = write_layer(layer, tmp_path / "inventory.gpkg")
    back = gpd.read_file(path, layer="glaciers")
    assert list(back["rgi_id"][:2]) == IDS and back.crs.to_epsg() == 4326
    assert back.is_valid.all() and len(back.geometry[0].interiors) == 1


def test_layer_without_dem_or_glaciers():
    empty = split_by_inventory(np.zeros((60, 90)), GRID, rgi6())
    layer = inventory_layer(empty, np.full((60, 90), 0.1), GRID, "2021-08-15", block_px=2,
                            samples=10)
    assert len(layer) == 0 and "zmin_m" not in layer.columns and "area_km2" in layer.columns
    assert list(empty.glaciers["pixels"]) == [0, 0]


def test_layer_refuses_inconsistent_inputs():
    split = split_by_inventory(ice_complex(), GRID, rgi6())
    with pytest.raises(InventoryError, match="no probability"):
        inventory_layer(split, np.full((60, 90), np.nan), GRID, "2021-08-15", block_px=2)
    with pytest.raises(InventoryError, match="not YYYY-MM-DD"):
        inventory_layer(split, np.full((60, 90), 0.5), GRID, "15.08.2021", block_px=2)
    with pytest.raises(InventoryError, match="DEM"):
        inventory_layer(split, np.full((60, 90), 0.5), GRID, "2021-08-15", block_px=2,
                        dem=np.zeros((5, 5)))


def _areas(everest, mask, max_distance_m=60.0):
    scene, _, grid, outlines = everest
    split = split_by_inventory(mask, grid, outlines, max_distance_m)
    layer = inventory_layer(split, mask.astype(float), grid, scene.date, block_px=1, samples=5)
    return split, layer.set_index("rgi_id")


def test_everest_rgi_mask_split_by_rgi_outlines(everest_rgi):
    _, mask, grid, outlines = everest_rgi
    split, layer = _areas(everest_rgi, mask)
    assert split.inventory == "RGI 6.0" and (split.glaciers["origin"] == "inventory").all()
    assert layer.is_valid.all() and layer.crs.to_epsg() == 4326
    # the mask is the outlines rasterised the same way: no change anywhere
    np.testing.assert_allclose(layer["area_change_km2"], 0.0, atol=1e-12)
    inside = outlines.to_crs(grid.crs.to_wkt()).within(shapely.box(*grid.bounds))
    rgi = outlines[inside].set_index("RGIId")
    large = rgi[rgi["Area"] >= 1.0]
    assert len(large) >= 8
    np.testing.assert_allclose(layer.loc[large.index, "area_km2"], large["Area"], rtol=0.01)


def test_everest_eroded_and_dilated_masks(everest_rgi):
    _, mask, grid, outlines = everest_rgi
    _, exact = _areas(everest_rgi, mask)
    _, eroded = _areas(everest_rgi, ndimage.binary_erosion(mask == 1))
    inside = outlines.to_crs(grid.crs.to_wkt())
    inside = inside[inside.within(shapely.box(*grid.bounds))].set_index("RGIId")
    lost = exact.loc[inside.index, "area_km2"] - eroded.loc[inside.index, "area_km2"]
    # one ring of pixels, at most the perimeter times a pixel
    assert (lost > 0).all() and (lost <= inside.length / 1000 * 0.030).all()
    dilated = ndimage.binary_dilation(mask == 1, iterations=2)  # every new pixel <= 85 m away
    split, grown = _areas(everest_rgi, dilated, max_distance_m=100.0)
    assert (split.glaciers["origin"] == "inventory").all()
    assert split.glaciers["pixels"].sum() == dilated.sum()
    assert (grown.loc[exact.index, "area_km2"] >= exact["area_km2"]).all()


def test_exploradores_invalid_rgi_outlines_are_repaired_and_dem_columns_match_rgi():
    folder = "exploradores_aster_dem/"
    try:
        paths = [fetch(folder + name) for name in (
            "glacier_mask_rgi60.tif", "17_rgi60_glacier_outlines.gpkg",
            "AST_L1A_00303182012144228_Z.tif")]
    except RealSceneNotAvailable as error:
        pytest.skip(f"Exploradores scene not available (shared/real_scenes absent): {error}")
    with rasterio.open(paths[0]) as dataset:
        mask = dataset.read(1)
        grid = Grid(dataset.crs, dataset.transform, dataset.height, dataset.width)
    with rasterio.open(paths[2]) as dataset:
        dem = dataset.read(1, masked=True).filled(np.nan)
    outlines = gpd.read_file(paths[1])
    split = split_by_inventory(mask, grid, outlines, 60.0, valid=np.isfinite(dem))
    assert len(split.notes) == 1 and "18 of 47 outlines were invalid as given" in split.notes[0]
    assert len(split.glaciers) == 22 and (split.glaciers["origin"] == "inventory").all()
    assert (split.labels > 0).sum() == ((mask == 1) & np.isfinite(dem)).sum()
    probability = np.where(np.isfinite(dem), (mask == 1).astype(float), np.nan)
    layer = inventory_layer(split, probability, grid, "2012-03-18", block_px=1, dem=dem,
                            samples=5).set_index("rgi_id")
    assert layer.is_valid.all()
    np.testing.assert_allclose(layer["area_change_km2"], 0.0, atol=1e-12)
    exploradores = layer.loc["RGI60-17.15831"]
    assert exploradores.zmin_m < 1000 < 3500 < exploradores.zmax_m
    inside = outlines.to_crs(grid.crs.to_wkt()).within(shapely.box(*grid.bounds))
    rgi = outlines[inside & (outlines["Area"] >= 1.0)].set_index("RGIId")
    # RGI 6.0 aspects come from an older DEM; the circular means agree within 15 degrees
    difference = (layer.loc[rgi.index, "aspect_deg"] - rgi["Aspect"] + 180.0) % 360.0 - 180.0
    assert len(rgi) >= 5 and (difference.abs() < 15.0).all()
