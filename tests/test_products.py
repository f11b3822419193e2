"""Product registry, --product, optical offset and the reflectance check of deploy."""

import argparse
import json

import numpy as np
import pytest
import rasterio
from scipy import ndimage
from test_deploy import CRS, TRANSFORM, scene_arrays, tiny_model, write_raster

from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.deploy import (
    DeploymentError,
    DeployOptions,
    add_deploy_arguments,
    deploy_from_args,
    deploy_scene,
)
from glacier_mapping.products import PRODUCTS, reflectance_problem, sample_optical

HEIGHT, WIDTH = 45, 52


def write_dn(path, data):
    """A uint16 GeoTIFF with nodata 0, as the products deliver it."""
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype="uint16", crs=CRS, transform=TRANSFORM,
                       nodata=0) as dataset:
        dataset.write(data.astype("uint16"))
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("products")
    reflectance, dem = scene_arrays(HEIGHT, WIDTH)
    dn = np.round(reflectance * 10_000 + 1000).astype("uint16")  # Sentinel-2 L2A >= 04.00
    dn[:, 0, 0] = 0  # one nodata pixel
    return {
        "root": root, "reflectance": reflectance, "dn": dn,
        "l2a": write_dn(root / "l2a.tif", dn),
        "per_band": [write_dn(root / f"{band}.tif", dn[index])
                     for index, band in enumerate(PRODUCTS["sentinel2-l2a"].bands)],
        "dem": write_raster(root / "dem.tif", dem),
        "model": tiny_model(root / "model.keras"),
    }


def deploy(kit, out, *extra, optical=None):
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    optical = [kit["l2a"]] if optical is None else optical
    files = ["--optical", *map(str, optical)] if optical else []
    args = parser.parse_args([*files, "--dem", str(kit["dem"]),
                              "--model", str(kit["model"]), "--out", str(out), "--no-progress",
                              "--precision", "float32", *extra])
    return deploy_from_args(args)


def maps(out):
    with rasterio.open(out / "glacier_class.tif") as classes, \
            rasterio.open(out / "confidence.tif") as confidence:
        return classes.read(1), confidence.read(1)


def test_registry_orders_bands_and_keeps_snow():
    assert set(PRODUCTS) == {"sentinel2-l2a", "sentinel2-l1c", "landsat-c2-l2", "landsat-c2-l1"}
    for product in PRODUCTS.values():
        assert len(product.bands) == len(product.common_names) == len(OPTICAL_BANDS)
        assert product.common_names[:3] == ("blue", "green", "red")
        assert product.common_names[4:] == ("swir16", "swir22")
        assert product.nodata == 0
    assert (PRODUCTS["sentinel2-l2a"].scale, PRODUCTS["sentinel2-l2a"].offset) == (1e-4, -0.1)
    assert (PRODUCTS["landsat-c2-l2"].scale, PRODUCTS["landsat-c2-l2"].offset) == (2.75e-5, -0.2)
    scl = PRODUCTS["sentinel2-l2a"].mask
    assert scl.kind == "classes" and scl.values == (0, 1, 3, 8, 9, 10) and 11 not in scl.values
    qa = PRODUCTS["landsat-c2-l2"].mask
    assert qa.kind == "bits" and qa.values == (0, 1, 3, 4) and 5 not in qa.values


def test_product_equals_explicit_flags_bit_for_bit(kit, tmp_path):
    assert deploy(kit, tmp_path / "product", "--product", "sentinel2-l2a") == 0
    assert deploy(kit, tmp_path / "flags", "--bands", ",".join(OPTICAL_BANDS),
                  "--optical-scale", "0.0001", "--optical-offset", "-0.1") == 0
    assert deploy(kit, tmp_path / "per_band", "--product", "sentinel2-l2a",
                  optical=kit["per_band"]) == 0
    product_maps = maps(tmp_path / "product")
    for other in ("flags", "per_band"):
        for mine, theirs in zip(product_maps, maps(tmp_path / other), strict=True):
            assert mine.tobytes() == theirs.tobytes()
    assert product_maps[0][0, 0] == 255 and 0 < (product_maps[0] == 1).mean() < 1
    parameters = json.loads((tmp_path / "product" / "summary.json").read_text())["parameters"]
    assert parameters["product"] == "sentinel2-l2a"
    assert (parameters["optical_scale"], parameters["optical_offset"]) == (1e-4, -0.1)
    assert parameters["optical_nodata"] == 0 and parameters["reflectance_check"] is True
    flags = json.loads((tmp_path / "flags" / "summary.json").read_text())["parameters"]
    assert flags["product"] is None and flags["optical_offset"] == -0.1


def test_missing_offset_is_refused_naming_it(kit, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert deploy(kit, out, "--bands", ",".join(OPTICAL_BANDS), "--optical-scale", "0.0001") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "about 0.1 too high everywhere" in error and "BOA_ADD_OFFSET (-1000)" in error
    assert "--product sentinel2-l2a" in error and "--skip-reflectance-check" in error
    assert not (tmp_path / "new").exists()


def test_digital_numbers_are_refused_naming_the_scale(kit, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert deploy(kit, out, "--bands", ",".join(OPTICAL_BANDS)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "look like digital numbers" in error and "--optical-scale 0.0001" in error
    assert "--product NAME" in error and "100.0 % of the sampled optical values" in error
    assert not (tmp_path / "new").exists()


def test_skip_reflectance_check_maps_anyway(kit, tmp_path):
    out = tmp_path / "out"
    assert deploy(kit, out, "--bands", ",".join(OPTICAL_BANDS), "--optical-scale", "0.0001",
                  "--skip-reflectance-check") == 0
    assert json.loads((out / "summary.json").read_text())["parameters"]["reflectance_check"] \
        is False


def test_product_flag_conflicts_are_refused(kit, tmp_path, capsys):
    assert deploy(kit, tmp_path / "a", "--product", "sentinel2-l2a",
                  "--optical-scale", "0.0001") == 2
    assert ("--product sentinel2-l2a sets the scale (0.0001) and offset (-0.1); drop "
            "--optical-scale") in capsys.readouterr().err
    assert deploy(kit, tmp_path / "b") == 2
    assert "Pass --bands (one name per optical file band" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_library_product_must_match_the_scene(kit, tmp_path):
    with pytest.raises(DeploymentError, match=r"^product='sentinel3' is not one of"):
        DeployOptions(product="sentinel3")
    with SceneSource(kit["l2a"], OPTICAL_BANDS, dem=kit["dem"], optical_scale=1e-4) as source, \
            pytest.raises(DeploymentError, match=r"offset 0 are not those of product "
                                                 r"sentinel2-l2a \(0\.0001, -0\.1\)"):
        deploy_scene(source, kit["model"], tmp_path / "out", DeployOptions(
            product="sentinel2-l2a"), progress=False)
    assert not (tmp_path / "out").exists()


def test_reflectance_problem_on_samples(kit):
    rng = np.random.default_rng(1)
    snow_and_rock = rng.uniform(0.0, 1.0, (1000, 6)).astype(np.float32)
    assert reflectance_problem(snow_and_rock, 1.0, 0.0) is None
    assert reflectance_problem(np.empty((0, 6), np.float32), 1.0, 0.0) is None
    ten_times = reflectance_problem(snow_and_rock * 10, 1.0, 0.0)
    assert "do not look like reflectance" in ten_times and "median" in ten_times
    with SceneSource(kit["l2a"], OPTICAL_BANDS, optical_scale=1e-4, optical_offset=-0.1,
                     optical_nodata=0) as source:
        sample = sample_optical(source)
    assert sample.shape == (HEIGHT * WIDTH - 1, 6)  # the scene is smaller than one window
    assert reflectance_problem(sample, 1e-4, -0.1) is None


def test_mask_conventions():
    scl = PRODUCTS["sentinel2-l2a"].mask
    values = np.array([0, 1, 2, 3, 4, 8, 9, 10, 11, np.nan])
    np.testing.assert_array_equal(scl.unusable(values),
                                  [1, 1, 0, 1, 0, 1, 1, 1, 0, 0])  # 11 snow/ice kept
    qa = PRODUCTS["landsat-c2-l2"].mask
    bits = np.array([0, 1, 2, 8, 16, 32, 21824, 22280, 32 | 8])
    # 21824 clear land, 22280 high-confidence cloud (bits 3, 8, 9, ...), 32 snow only
    np.testing.assert_array_equal(qa.unusable(bits), [0, 1, 1, 1, 1, 0, 0, 1, 1])


def test_quality_band_masks_clouds_and_is_recorded(kit, tmp_path):
    scl = np.full((HEIGHT, WIDTH), 4, dtype="uint16")  # vegetation
    scl[10:20, 5:25] = 9  # cloud, high probability
    scl[30:40, 30:50] = 11  # snow and ice: kept
    quality = write_dn(tmp_path / "scl.tif", scl)
    assert deploy(kit, tmp_path / "plain", "--product", "sentinel2-l2a") == 0
    assert deploy(kit, tmp_path / "masked", "--product", "sentinel2-l2a", "--quality",
                  str(quality)) == 0
    maps = {}
    for run in ("plain", "masked"):
        with rasterio.open(tmp_path / run / "glacier_class.tif") as classes, \
                rasterio.open(tmp_path / run / "confidence.tif") as conf:
            maps[run] = classes.read(1), conf.read(1)
    (before, before_conf), (after, after_conf) = maps["plain"], maps["masked"]
    cloud = scl == 9
    assert (after[cloud] == 255).all() and (before[cloud] != 255).all()
    # beyond the model's 3 x 3 receptive field around the cloud, nothing changes
    away = ~ndimage.binary_dilation(cloud, structure=np.ones((3, 3), bool))
    np.testing.assert_array_equal(after_conf[away], before_conf[away])
    np.testing.assert_array_equal(after[away], before[away])
    summary = json.loads((tmp_path / "masked" / "summary.json").read_text())
    assert summary["parameters"]["quality"] == str(quality)
    assert "cloud" in summary["parameters"]["quality_mask"]
    assert summary["pixels"]["valid"] == HEIGHT * WIDTH - 1 - cloud.sum()


def test_quality_band_needs_the_product(kit, tmp_path, capsys):
    quality = write_dn(tmp_path / "scl.tif", np.full((HEIGHT, WIDTH), 4))
    reflectance = write_raster(tmp_path / "reflectance.tif", kit["reflectance"])
    assert deploy(kit, tmp_path / "out", "--bands", ",".join(OPTICAL_BANDS), "--quality",
                  str(quality), optical=[reflectance]) == 2
    assert "--quality needs --product" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
