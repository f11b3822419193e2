"""map_glaciers: an xarray Dataset (numpy- or dask-backed) mapped like ``deploy`` maps files."""

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import keras
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from keras import layers
from rasterio.transform import from_origin
from test_deploy import scene_arrays

import glacier_mapping
from glacier_mapping.calibration import TemperatureCalibrator
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneError, SceneSource
from glacier_mapping.deploy import DeploymentError, DeployOptions, deploy_scene
from glacier_mapping.mapping import map_glaciers
from glacier_mapping.models.blocks import MCDropout

CRS = "EPSG:32645"
TRANSFORM = from_origin(470_000.0, 3_110_000.0, 30.0, 30.0)
OPTIONS = DeployOptions(stride=8, batch_size=4, precision="float32")


def conv_model(path, patch, dropout=0.0):
    """A deterministic 3x3 conv model (glacier where red is bright), with MC dropout if asked."""
    keras.utils.set_random_seed(0)
    optical = keras.Input((patch, patch, 6), name="optical")
    dem = keras.Input((patch, patch, 2), name="dem")
    merged = layers.Concatenate()([optical, dem])
    if dropout:
        merged = MCDropout(dropout)(merged)
    conv = layers.Conv2D(2, 3, padding="same", name="conv")
    output = layers.Softmax(name="output")(conv(merged))
    model = keras.Model({"optical": optical, "dem": dem}, {"output": output})
    kernel = np.zeros(conv.kernel.shape, dtype="float32")
    kernel[:, :, 2, 1] = 1.5
    kernel[1, 1, 2, 1] = 4.0
    conv.kernel.assign(kernel)
    conv.bias.assign(np.array([0.0, -6.0], dtype="float32"))
    model.save(path)
    return path


def write(path, data, nodata=None, scale=1.0):
    data = np.asarray(data, dtype="float32")
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype="float32", crs=CRS, transform=TRANSFORM,
                       nodata=nodata, tiled=True, blockxsize=64, blockysize=64) as out:
        out.write(data / np.float32(scale))
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("mapping")
    optical, dem = scene_arrays(70, 90)
    optical[:, 3, 5] = -1.0  # one nodata pixel
    return {
        "optical": write(root / "optical.tif", optical, nodata=-1.0),
        "dem": write(root / "dem.tif", dem),
        "model": conv_model(root / "model.keras", 16),
        "dropout_model": conv_model(root / "dropout.keras", 16, dropout=0.3),
        "calibrator": TemperatureCalibrator(temperature=1.4).save(root / "calib.json"),
    }


def dask_dataset(kit, per_band=False):
    optical = rioxarray.open_rasterio(kit["optical"], chunks={"x": 32, "y": 32})
    dem = rioxarray.open_rasterio(kit["dem"], chunks={"x": 32, "y": 32}).squeeze("band",
                                                                                drop=True)
    if not per_band:
        return xr.Dataset({"optical": optical, "dem": dem})
    names = ("blue", "green", "red", "nir08", "swir16", "swir22")  # odc-stac's common names
    bands = {name: optical.isel(band=index, drop=True) for index, name in enumerate(names)}
    dataset = xr.Dataset({**bands, "dem": dem}).expand_dims(
        time=[np.datetime64("2021-08-14")])
    return dataset


def test_dask_dataset_equals_deploy(kit, tmp_path):
    with SceneSource(kit["optical"], OPTICAL_BANDS, dem=kit["dem"]) as source:
        summary = deploy_scene(source, kit["model"], tmp_path / "out", OPTIONS,
                               calibrator_path=kit["calibrator"], progress=False)
    dataset = dask_dataset(kit)
    assert dataset["optical"].chunks is not None  # dask-backed
    mapped = map_glaciers(dataset, kit["model"], calibrator=kit["calibrator"], options=OPTIONS)
    with rasterio.open(summary.outputs["glacier_class.tif"]) as classes:
        np.testing.assert_array_equal(mapped["glacier_class"].values, classes.read(1))
    with rasterio.open(summary.outputs["confidence.tif"]) as conf:
        np.testing.assert_allclose(mapped["confidence"].values, conf.read(1), atol=1e-6,
                                   equal_nan=True)
    assert mapped["glacier_class"].values[3, 5] == 255
    assert 0.1 < (mapped["glacier_class"].values == 1).mean() < 0.9  # a non-trivial map
    assert mapped.rio.crs.to_string() == CRS
    assert mapped.rio.transform() == TRANSFORM
    np.testing.assert_array_equal(mapped["x"].values, dataset["x"].values)
    assert mapped.attrs["estimated_iou"] == pytest.approx(summary.estimated_iou)
    assert mapped.attrs["glacier_area_km2"] == pytest.approx(summary.glacier_area_km2)
    assert mapped.attrs["valid_pixels"] == summary.pixels["valid"] == 70 * 90 - 1


def test_common_band_names_and_time_dimension(kit):
    one = map_glaciers(dask_dataset(kit), kit["model"], options=OPTIONS)
    other = map_glaciers(dask_dataset(kit, per_band=True), kit["model"], options=OPTIONS)
    np.testing.assert_array_equal(one["glacier_class"].values, other["glacier_class"].values)
    assert other.attrs["date"] == "2021-08-14" and "date" not in one.attrs
    assert "estimated_iou" not in one.attrs  # no calibrator: no estimate
    assert glacier_mapping.map_glaciers is map_glaciers


def test_product_scale_and_offset(kit, tmp_path):
    """Sentinel-2 L2A digital numbers (reflectance = DN * 1e-4 - 0.1) map like reflectance."""
    optical = rioxarray.open_rasterio(kit["optical"]).astype("float32")
    dem = rioxarray.open_rasterio(kit["dem"]).squeeze("band", drop=True)
    dn = ((optical + 0.1) * 1e4).round().where(optical != -1.0, 0.0)
    reflectance = map_glaciers(xr.Dataset({"optical": optical, "dem": dem}), kit["model"],
                               options=OPTIONS)
    mapped = map_glaciers(xr.Dataset({"optical": dn, "dem": dem}), kit["model"],
                          product="sentinel2-l2a", options=OPTIONS)
    agree = (mapped["glacier_class"].values == reflectance["glacier_class"].values).mean()
    assert agree > 0.999
    scl = xr.full_like(dem, 4, dtype="uint16")
    scl[20:30, 40:60] = 9  # cloud, high probability: no data
    cloudy = map_glaciers(xr.Dataset({"optical": dn, "dem": dem, "SCL": scl}), kit["model"],
                          product="sentinel2-l2a", options=OPTIONS)
    assert (cloudy["glacier_class"].values[20:30, 40:60] == 255).all()
    assert cloudy.attrs["valid_pixels"] == mapped.attrs["valid_pixels"] - 200
    with pytest.raises(DeploymentError, match="reflectance"):  # DN taken for reflectance
        map_glaciers(xr.Dataset({"optical": dn, "dem": dem}), kit["model"],
                     options=replace(OPTIONS, reflectance_check=True))


def test_mc_dropout_spread(kit):
    options = DeployOptions(stride=8, batch_size=4, precision="float32", mc_passes=4)
    mapped = map_glaciers(dask_dataset(kit), kit["dropout_model"], options=options, spread=True)
    spread = mapped["mc_spread"].values
    valid = mapped["glacier_class"].values != 255
    assert np.isnan(spread[~valid]).all() and np.isfinite(spread[valid]).all()
    assert (spread[valid] >= 0).all() and spread[valid].max() > 0.01
    with pytest.raises(DeploymentError, match="mc_passes >= 2"):
        map_glaciers(dask_dataset(kit), kit["dropout_model"], options=OPTIONS, spread=True)


def test_bad_datasets_name_the_variable_and_the_fix(kit):
    dataset = dask_dataset(kit, per_band=True)
    with pytest.raises(SceneError, match=r"lacks the optical band\(s\) swir2 \(swir2 or swir22\)"):
        map_glaciers(dataset.drop_vars("swir22"), kit["model"], options=OPTIONS)
    with pytest.raises(SceneError, match="map one acquisition at a time"):
        map_glaciers(xr.concat([dataset, dataset], "time"), kit["model"], options=OPTIONS)
    shifted = dataset["dem"].assign_coords(x=dataset["x"] + 10.0)  # another grid
    with pytest.raises(SceneError, match=r"x coordinates are not evenly spaced.*reproject_match"):
        map_glaciers(xr.merge([dataset.drop_vars("dem"), shifted], join="outer"), kit["model"],
                     options=OPTIONS)
    no_crs = dask_dataset(kit)
    no_crs["optical"] = no_crs["optical"].drop_vars("spatial_ref")
    with pytest.raises(SceneError, match="no CRS"):
        map_glaciers(no_crs.drop_vars("spatial_ref", errors="ignore"), kit["model"],
                     options=OPTIONS)
    with pytest.raises(DeploymentError, match="needs the \\['dem'\\]"):
        map_glaciers(dataset.drop_vars("dem"), kit["model"], options=OPTIONS)
    with pytest.raises(DeploymentError, match="path of a .keras file"):
        map_glaciers(dataset, keras.saving.load_model(kit["model"]), options=OPTIONS)


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    import rioxarray, xarray as xr
    from glacier_mapping.deploy import DeployOptions
    from glacier_mapping.mapping import map_glaciers

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def dataset(optical, dem):
        chunks = {"x": 256, "y": 256}
        return xr.Dataset({
            "optical": rioxarray.open_rasterio(optical, chunks=chunks),
            "dem": rioxarray.open_rasterio(dem, chunks=chunks).squeeze("band", drop=True)})

    model, warm_optical, warm_dem, optical, dem = sys.argv[1:]
    options = DeployOptions(stride=64, batch_size=8, precision="float32", prefetch=True)
    map_glaciers(dataset(warm_optical, warm_dem), model, options=options)  # load and trace
    base = peak_mb()
    mapped = map_glaciers(dataset(optical, dem), model, options=options)
    print(json.dumps({"base_mb": base, "peak_mb": peak_mb(),
                      "result_mb": mapped.nbytes / 2**20}))
""")


def _write_tall(path, bands, height, width):
    """A tiled float32 GeoTIFF written strip by strip (never whole in memory)."""
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=bands,
                       dtype="float32", crs=CRS, transform=TRANSFORM, tiled=True,
                       blockxsize=256, blockysize=256) as out:
        for top in range(0, height, 512):
            rows = min(512, height - top)
            optical, dem = scene_arrays(rows, width, seed=top)
            data = optical if bands == 6 else dem[None]
            out.write(data,
                      window=rasterio.windows.Window(0, top, width, rows))
    return path


def test_memory_does_not_grow_with_scene_area(tmp_path):
    """Peak RSS of a 16x larger scene (taller) within 1.5x; growth beyond the result small."""
    model = conv_model(tmp_path / "model.keras", 64)
    warm = [_write_tall(tmp_path / f"warm_{n}.tif", b, 128, 512)
            for n, b in (("optical", 6), ("dem", 1))]
    peaks = {}
    for factor in (1, 16):
        files = [_write_tall(tmp_path / f"{factor}_{n}.tif", b, 512 * factor, 512)
                 for n, b in (("optical", 6), ("dem", 1))]
        run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(model), *map(str, warm),
                              *map(str, files)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[factor] = json.loads(run.stdout.strip().splitlines()[-1])
    small, large = peaks[1], peaks[16]
    assert large["peak_mb"] <= 1.5 * small["peak_mb"], peaks
    # Reading the 16x scene whole would add its 128 MB of float32 inputs; the result itself
    # (5 bytes a pixel) is the only part allowed to grow.
    growth = (large["peak_mb"] - large["base_mb"]) - large["result_mb"]
    assert growth <= max(small["peak_mb"] - small["base_mb"], 0.0) + 48.0, peaks


def test_other_backends_map_like_tensorflow(kit):
    """map_glaciers runs the exported model (ONNX Runtime, OpenVINO) like deploy does."""
    reference = map_glaciers(dask_dataset(kit), kit["model"], options=OPTIONS)
    for backend in ("onnxruntime", "openvino"):
        mapped = map_glaciers(dask_dataset(kit), kit["model"],
                              options=replace(OPTIONS, backend=backend))
        np.testing.assert_allclose(mapped["confidence"].values,
                                   reference["confidence"].values, atol=1e-4, equal_nan=True)
        assert (mapped["glacier_class"].values != reference["glacier_class"].values).mean() \
            < 1e-3
