"""``deploy --inventory``: glaciers.gpkg as an inventory layer, its summary record and refusals."""

import argparse
import json
import re

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from scipy import ndimage
from test_deploy import CRS, TRANSFORM, tiny_model, write_raster

from glacier_mapping.area_uncertainty import bootstrap_areas, glacier_probability
from glacier_mapping.calibration import TemperatureCalibrator
from glacier_mapping.data.scenes import OPTICAL_BANDS, Grid, SceneSource
from glacier_mapping.deploy import (
    DeploymentError,
    InventoryOptions,
    add_deploy_arguments,
    deploy_from_args,
    deploy_scene,
    read_summary,
)
from glacier_mapping.pixel_geometry import pixel_areas_km2

HEIGHT, WIDTH = 48, 80
IDS = ["RGI60-11.00001", "RGI60-11.00002", "RGI60-11.00003"]
BLOCK_PX = 4
GRID = Grid(rasterio.crs.CRS.from_string(CRS), TRANSFORM, HEIGHT, WIDTH)
#: Columns of the inventory layer with a DEM, in order, and their dtypes as read back.
COLUMNS = {
    "rgi_id": "str", "glims_id": "str", "glac_name": "str", "src_date": "str",
    "cenlon": "float64", "cenlat": "float64", "utm_zone": "int32", "area_km2": "float64",
    "zmin_m": "float64", "zmax_m": "float64", "zmed_m": "float64", "zmean_m": "float64",
    "slope_deg": "float64", "aspect_deg": "float64", "mean_confidence": "float64",
    "expected_area_km2": "float64", "area_low_km2": "float64", "area_high_km2": "float64",
    "inventory_area_km2": "float64", "area_change_km2": "float64", "label": "int32",
}


def cells(top, bottom, left, right):
    """The rectangle of pixel rows top..bottom-1 and columns left..right-1, in the grid's CRS."""
    x0, y0, size = TRANSFORM.c, TRANSFORM.f, TRANSFORM.a
    return shapely.box(x0 + left * size, y0 - bottom * size, x0 + right * size, y0 - top * size)


def ice_mask(shrink=0, blobs=("far",), third=False):
    """An ice complex over two outlines (a nunatak in the first), optional blobs and third ice.

    ``shrink`` pulls the complex's east edge back by that many pixels.
    """
    ice = np.zeros((HEIGHT, WIDTH), dtype=bool)
    ice[8:40, 8:56 - shrink] = True
    ice[20:26, 14:20] = False  # nunatak
    places = {"far": (slice(4, 10), slice(64, 72)), "moved": (slice(4, 10), slice(66, 74)),
              "south": (slice(14, 18), slice(66, 72)), "corner": (slice(1, 4), slice(1, 4))}
    for blob in blobs:
        ice[places[blob]] = True
    if third:
        ice[42:47, 60:78] = True
    return ice


def write_scene(folder, ice, name="optical"):
    """Optical and DEM files whose bright red marks ``ice`` (the tiny model maps it as glacier)."""
    rng = np.random.default_rng(0)
    optical = rng.uniform(0.05, 0.15, (6, HEIGHT, WIDTH)).astype("float32")
    optical[2] += 0.8 * ice
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    dem = 1000.0 + 3.0 * rows + 2.0 * cols
    return write_raster(folder / f"{name}.tif", optical), write_raster(folder / "dem.tif", dem)


def write_outlines(path, version="RGI 6.0", crs="EPSG:4326", **changes):
    columns = {"RGI 6.0": ("RGIId", "GLIMSId", "Name"), "RGI 7.0": ("rgi_id", "glims_id",
                                                                   "glac_name")}[version]
    frame = gpd.GeoDataFrame(
        {columns[0]: IDS, columns[1]: ["G008000E46000N", "", ""],
         columns[2]: ["Alpha Glacier", "", "Gamma Glacier"], "Area": [1.0, 1.0, 0.1]},
        geometry=[shapely.segmentize(geometry, 30.0) for geometry in
                  (cells(8, 40, 8, 32), cells(8, 40, 32, 56), cells(42, 47, 60, 78))],
        crs=CRS).to_crs(crs)
    frame = frame.rename(columns=changes.pop("rename", {}))
    if changes.pop("no_crs", False):
        frame = frame.set_crs(None, allow_override=True)
    frame.to_file(path)
    return path


def write_calibrator(path, block_px=BLOCK_PX):
    TemperatureCalibrator(temperature=1.7).save(path)
    if block_px is not None:
        data = json.loads(path.read_text())
        data["area_errors"] = {"block_px": block_px, "correlation_length_px": 1.6,
                               "radius_px": 8}
        path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inventory_kit")
    optical, dem = write_scene(folder, ice_mask())
    return {"folder": folder, "optical": optical, "dem": dem,
            "model": tiny_model(folder / "model.keras"),
            "calibrator": write_calibrator(folder / "calibrator.json"),
            "plain_calibrator": write_calibrator(folder / "plain.json", block_px=None),
            "outlines": write_outlines(folder / "rgi6.shp"),
            "rgi7": write_outlines(folder / "rgi7.gpkg", "RGI 7.0", "EPSG:3857")}


@pytest.fixture(scope="module")
def deployed(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("deployed") / "out"
    with SceneSource(kit["optical"], OPTICAL_BANDS, dem=kit["dem"], date="2020-08-01") as source:
        summary = deploy_scene(source, kit["model"], out, calibrator_path=kit["calibrator"],
                               inventory=InventoryOptions(kit["outlines"]), progress=False)
    return out, summary


def read_layer(out):
    return gpd.read_file(out / "glaciers.gpkg", layer="glaciers")


def read_rasters(out):
    with rasterio.open(out / "glacier_class.tif") as classes, \
            rasterio.open(out / "confidence.tif") as confidence:
        return classes.read(1), confidence.read(1)


def test_an_ice_complex_is_split_by_two_outlines(deployed):
    out, summary = deployed
    layer = read_layer(out)
    glacier = read_rasters(out)[0] == 1
    assert (glacier <= ice_mask()).all() and glacier.sum() > 0.6 * ice_mask().sum()
    assert sorted(layer["rgi_id"]) == ["", IDS[0], IDS[1]]  # the third outline has no ice
    by_id = layer.set_index("rgi_id")
    assert by_id.loc[IDS[0], "glac_name"] == "Alpha Glacier"
    assert by_id.loc[IDS[0], "glims_id"] == "G008000E46000N"
    areas = pixel_areas_km2(GRID)
    west, east, new = (glacier.copy() for _ in range(3))
    west[:, 32:], east[:, :32], east[:, 60:], new[:, :60] = False, False, False, False
    for ident, pixels in ((IDS[0], west), (IDS[1], east), ("", new)):
        assert by_id.loc[ident, "area_km2"] == pytest.approx(areas[pixels].sum(), rel=1e-9)
    assert by_id.loc[IDS[1], "inventory_area_km2"] == pytest.approx(areas[8:40, 32:56].sum(),
                                                                    rel=1e-6)
    assert np.isnan(by_id.loc["", "inventory_area_km2"])
    assert (layer["src_date"] == "2020-08-01").all()
    assert summary.polygon_count == len(layer) == 3


def test_layer_is_wgs84_valid_with_holes_and_documented_columns(deployed):
    layer = read_layer(deployed[0])
    assert layer.crs.to_epsg() == 4326
    assert layer.is_valid.all() and (layer.geom_type == "Polygon").all()
    holes = {ident: len(geometry.interiors) for ident, geometry in
             zip(layer["rgi_id"], layer.geometry, strict=True)}
    assert holes == {IDS[0]: 1, IDS[1]: 0, "": 0}  # the nunatak
    assert list(layer.columns) == [*COLUMNS, "geometry"]
    assert {name: str(dtype) for name, dtype in layer.dtypes.items() if name != "geometry"} \
        == COLUMNS
    assert (layer["area_low_km2"] <= layer["expected_area_km2"]).all()
    assert (layer["expected_area_km2"] <= layer["area_high_km2"]).all()
    assert (layer["zmin_m"] > 1000.0).all() and (layer["zmax_m"] < 1000.0 + 3 * 48 + 2 * 80).all()
    assert layer["cenlon"].between(9.0, 9.1).all() and (layer["utm_zone"] == 32).all()


def test_summary_has_the_inventory_record(deployed, kit):
    out, summary = deployed
    saved = read_summary(out)
    record = saved["inventory"]
    assert record == summary.inventory
    assert record["outlines"] == str(kit["outlines"]) and record["version"] == "RGI 6.0"
    assert record["max_distance_m"] == 100.0
    assert record["block_px"] == BLOCK_PX and record["block_source"] == "calibrator (area_errors)"
    assert record["glaciers"] == {"inventory_with_ice": 2, "new": 1, "inventory_without_ice": 1}
    assert record["notes"] == []
    assert "inventory" in saved["seconds"] and "vectorise" not in saved["seconds"]
    # the scene's interval: the area model's draws on the published rasters
    classes, confidence = read_rasters(out)
    probability = glacier_probability(classes, confidence)
    drawn = bootstrap_areas(probability, np.zeros(classes.shape, np.uint8),
                            pixel_areas_km2(GRID), BLOCK_PX, record["samples"], record["seed"])
    assert record["expected_area_km2"] == pytest.approx(drawn.scene_expected_km2)
    assert (record["area_low_km2"], record["area_high_km2"]) == pytest.approx(
        drawn.scene_interval(record["level"]))
    assert record["area_low_km2"] < record["expected_area_km2"] < record["area_high_km2"]
    # the scene's draws do not depend on the zones: the same as the layer's, with its zones
    zoned = bootstrap_areas(probability, ndimage.label(classes == 1)[0], pixel_areas_km2(GRID),
                            BLOCK_PX, record["samples"], record["seed"])
    np.testing.assert_allclose(zoned.scene_samples_km2, drawn.scene_samples_km2, rtol=1e-12)
    layer = read_layer(out)
    assert layer["expected_area_km2"].sum() <= record["expected_area_km2"] + 1e-9


def base_argv(kit, out, *extra):
    return ["--optical", str(kit["optical"]), "--bands", ",".join(OPTICAL_BANDS),
            "--dem", str(kit["dem"]), "--model", str(kit["model"]), "--no-progress",
            "--out", str(out), *extra]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    return parser.parse_args(argv)


def test_cli_components_rgi7_and_block_override(kit, tmp_path, capsys):
    out = tmp_path / "components"
    argv = base_argv(kit, out, "--calibrator", str(kit["plain_calibrator"]), "--date",
                     "2021-07-30", "--inventory", "--area-block-px", "3", "--max-distance", "50")
    assert deploy_from_args(parse(argv)) == 0
    printed = capsys.readouterr().out
    assert "inventory: 0 inventory glaciers with ice, 2 new, 0 without ice" in printed
    record = read_summary(out)["inventory"]
    assert record["outlines"] is None and record["version"] is None
    assert (record["block_px"], record["block_source"]) == (3, "--area-block-px")
    assert record["max_distance_m"] == 50.0
    layer = read_layer(out)
    assert (layer["rgi_id"] == "").all() and len(layer) == 2  # the complex and the blob
    assert layer["inventory_area_km2"].isna().all()
    out7 = tmp_path / "rgi7"
    argv = base_argv(kit, out7, "--calibrator", str(kit["calibrator"]), "--date", "2021-07-30",
                     "--inventory", str(kit["rgi7"]))
    assert deploy_from_args(parse(argv)) == 0
    assert read_summary(out7)["inventory"]["version"] == "RGI 7.0"
    assert sorted(read_layer(out7)["rgi_id"]) == ["", IDS[0], IDS[1]]


def test_default_mode_has_no_inventory_record(kit, tmp_path):
    out = tmp_path / "plain"
    assert deploy_from_args(parse(base_argv(kit, out, "--date", "2020-08-01"))) == 0
    saved = read_summary(out)
    assert "inventory" not in saved and "vectorise" in saved["seconds"]
    assert list(read_layer(out).columns) == ["glacier_id", "area_km2", "pixel_count",
                                             "mean_confidence", "estimated_iou", "scene", "date",
                                             "geometry"]


def _garbage(kit, tmp_path):
    path = tmp_path / "garbage.gpkg"
    path.write_bytes(b"\x00not a geopackage" * 50)
    return path


@pytest.mark.parametrize(("make_args", "pattern"), [
    (lambda k, t: ["--calibrator", str(k["calibrator"]), "--inventory"],
     r"^--inventory needs the scene's acquisition date .*optical.tif has no date tag; pass "
     r"--date YYYY-MM-DD\.$"),
    (lambda k, t: ["--date", "2020-08-01", "--inventory"],
     r"^--inventory needs calibrated confidence .*; pass --calibrator JSON\.$"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["plain_calibrator"]),
                   "--inventory"],
     r"^--inventory needs the block size .*plain.json has no 'area_errors' record; pass a "
     r"calibrator saved with one .* or --area-block-px N\.$"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]),
                   "--inventory", str(t / "none.shp")],
     r"^--inventory .*none.shp does not exist; pass RGI 6.0 or 7.0 outlines"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]),
                   "--inventory", str(_garbage(k, t))],
     r"^--inventory .*garbage.gpkg cannot be read as vector data"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]), "--inventory",
                   str(write_outlines(t / "ids.gpkg", rename={"RGIId": "id"}))],
     r"^--inventory .*ids.gpkg: The outlines have columns .*expected the id column of RGI 7.0 "
     r"\(rgi_id, glims_id, glac_name\) or RGI 6.0"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]), "--inventory",
                   str(write_outlines(t / "nocrs.gpkg", no_crs=True))],
     r"^--inventory .*nocrs.gpkg: The outlines have no CRS"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]),
                   "--inventory", "--max-distance", "-5"],
     r"^--max-distance must be a distance >= 0 in metres, got -5.0"),
    (lambda k, t: ["--date", "2020-08-01", "--calibrator", str(k["calibrator"]),
                   "--inventory", "--area-block-px", "0"],
     r"^--area-block-px must be an integer >= 1"),
    (lambda k, t: ["--max-distance", "50"],
     r"^--max-distance applies to --inventory only; add --inventory \[OUTLINES\] or drop"),
])
def test_refused_inventory_runs_create_nothing(kit, tmp_path, capsys, make_args, pattern):
    extra = make_args(kit, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert deploy_from_args(parse(base_argv(kit, tmp_path / "new" / "out", *extra))) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    message = error.removeprefix("glacier-mapping deploy: error: ").rstrip("\n")
    assert re.search(pattern, message), message
    assert sorted(tmp_path.rglob("*")) == before


def test_inventory_options_check_their_values():
    with pytest.raises(DeploymentError, match="--max-distance"):
        InventoryOptions(max_distance_m=float("nan"))
    with pytest.raises(DeploymentError, match="--area-block-px"):
        InventoryOptions(block_px=2.5)
