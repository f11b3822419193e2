"""Scene deployment: strip-wise inference, output rasters, outlines, summary and errors."""

import argparse
import json
import math
import threading

import geopandas as gpd
import keras
import numpy as np
import pytest
import rasterio
from keras import layers
from rasterio.transform import from_origin

import glacier_mapping.deploy as deploy
from glacier_mapping.adaptation import save_region_vector
from glacier_mapping.calibration import TemperatureCalibrator, confidence
from glacier_mapping.data.patches import coordinate_vector
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneError, SceneSource, load_scene
from glacier_mapping.deploy import (
    DeploymentError,
    DeployOptions,
    add_deploy_arguments,
    deploy_from_args,
    deploy_scene,
)
from glacier_mapping.inference import WindowBlender, predict_array

P = 16
CRS = "EPSG:32632"
TRANSFORM = from_origin(500_000.0, 5_100_000.0, 30.0, 30.0)


def write_raster(path, data, nodata=None):
    data = np.asarray(data, dtype="float32")
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype="float32", crs=CRS, transform=TRANSFORM,
                       nodata=nodata) as dataset:
        dataset.write(data)
    return path


def tiny_model(path, sensors=("optical", "dem"), location_size=None):
    """A deterministic 3x3 conv model following the sensor-dict contract, saved as .keras."""
    keras.utils.set_random_seed(0)
    channels = {"optical": 6, "dem": 2, "thermal": 1}
    inputs = {name: keras.Input((P, P, channels[name]), name=name) for name in sensors}
    merged = layers.Concatenate()(list(inputs.values())) if len(inputs) > 1 else next(
        iter(inputs.values()))
    logits = layers.Conv2D(2, 3, padding="same", name="conv")(merged)
    if location_size is not None:
        location = keras.Input((location_size,), name="location")
        inputs["location"] = location
        shift = layers.Reshape((1, 1, 2))(layers.Dense(2, name="loc_dense")(location))
        logits = layers.Add()([logits, layers.UpSampling2D(P)(shift)])
    output = layers.Softmax(name="output")(logits)
    model = keras.Model(inputs, {"output": output})
    conv = model.get_layer("conv")
    kernel = np.zeros(conv.kernel.shape, dtype="float32")
    # Glacier logit grows with red reflectance (optical channel 2) and its neighbours.
    kernel[:, :, 2, 1] = 1.5
    kernel[1, 1, 2, 1] = 4.0
    conv.kernel.assign(kernel)
    conv.bias.assign(np.array([0.0, -12.0 * 0.5 - 1.5 * 8 * 0.5 + 6.0], dtype="float32"))
    model.save(path)
    return path


def scene_arrays(height, width, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    blobs = (np.sin(rows / 4.0) * np.cos(cols / 5.0) > 0.2).astype("float32")
    optical = rng.uniform(0.05, 0.15, (6, height, width)).astype("float32")
    optical[2] += 0.8 * blobs
    dem = 1000.0 + 3.0 * rows + 2.0 * cols + rng.normal(0, 1, (height, width))
    return optical, dem


@pytest.fixture
def files(tmp_path):
    height, width = 45, 52
    optical, dem = scene_arrays(height, width)
    optical[:, 0, 0] = -1.0  # one nodata pixel
    return {
        "optical": write_raster(tmp_path / "optical.tif", optical, nodata=-1.0),
        "dem": write_raster(tmp_path / "dem.tif", dem),
        "model": tiny_model(tmp_path / "model.keras"),
        "calibrator": TemperatureCalibrator(temperature=1.7).save(tmp_path / "calib.json"),
        "shape": (height, width),
    }


def source_of(files, **kwargs):
    return SceneSource(files["optical"], OPTICAL_BANDS, dem=files["dem"], **kwargs)


def test_strips_equal_one_piece_and_outputs_are_georeferenced(files, tmp_path):
    with source_of(files) as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out",
                               DeployOptions(stride=5, batch_size=3, precision="float32"),
                               calibrator_path=files["calibrator"], progress=False)
        scene = load_scene(source)
    model = keras.saving.load_model(files["model"])
    probs = predict_array(model, scene.arrays(), P, stride=5, batch_size=64)
    calibrator = TemperatureCalibrator(temperature=1.7)
    expected_conf = calibrator.calibrated_confidence(probs)
    valid = scene.valid.values
    with rasterio.open(summary.outputs["glacier_class.tif"]) as classes:
        assert classes.crs.to_string() == CRS
        assert classes.transform == TRANSFORM
        assert classes.nodata == 255 and classes.dtypes[0] == "uint8"
        assert classes.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        class_map = classes.read(1)
    with rasterio.open(summary.outputs["confidence.tif"]) as conf:
        assert conf.crs.to_string() == CRS and conf.transform == TRANSFORM
        assert math.isnan(conf.nodata) and conf.dtypes[0] == "float32"
        conf_map = conf.read(1)
    assert class_map[0, 0] == 255 and np.isnan(conf_map[0, 0])
    np.testing.assert_array_equal(class_map[valid], np.argmax(probs, -1)[valid])
    np.testing.assert_allclose(conf_map[valid], expected_conf[valid], atol=1e-5)
    assert 0.1 < class_map[valid].mean() < 0.9  # a non-trivial map
    assert summary.pixels["valid"] == valid.sum() == 45 * 52 - 1
    assert summary.pixels["glacier"] == int((class_map == 1).sum())
    assert summary.estimated_iou is not None and 0.0 < summary.estimated_iou <= 1.0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["estimated_iou"] == pytest.approx(summary.estimated_iou)
    assert saved["model"]["sensors"] == ["optical", "dem"]
    assert saved["peak_memory_mb"] > 0 and saved["seconds"]["total"] > 0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_scene_probabilities_are_the_chapters_bit_for_bit(files, tmp_path, monkeypatch):
    """deploy_scene and predict_array blend with the one WindowBlender: identical float32."""
    finished = []
    real_write = deploy._StripWriter.write

    def recording(self, rows):
        finished.append(rows)
        real_write(self, rows)

    monkeypatch.setattr(deploy._StripWriter, "write", recording)
    with source_of(files) as source:
        deploy_scene(source, files["model"], tmp_path / "out",
                     DeployOptions(stride=5, batch_size=3, precision="float32"), progress=False)
        scene = load_scene(source)
    model = keras.saving.load_model(files["model"])
    expected = predict_array(model, scene.arrays(), P, stride=5, batch_size=3)
    assert [rows.top for rows in finished] == [0, 5, 10, 15, 20, 25, 29]  # strip by strip
    probs = np.concatenate([rows.probs for rows in finished])
    valid = np.concatenate([rows.mask for rows in finished])
    np.testing.assert_array_equal(valid, scene.valid.values)
    np.testing.assert_array_equal(probs[valid], expected[valid])


@pytest.mark.parametrize("blend", ["original", "uniform"])
def test_scene_blend_equals_the_chapters_blend(files, tmp_path, blend):
    with source_of(files) as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out",
                               DeployOptions(stride=5, batch_size=3, precision="float32",
                                             blend=blend), progress=False)
        scene = load_scene(source)
    model = keras.saving.load_model(files["model"])
    probs = predict_array(model, scene.arrays(), P, stride=5, blend=blend)
    narrow = predict_array(model, scene.arrays(), P, stride=5)
    valid = scene.valid.values
    with rasterio.open(summary.outputs["confidence.tif"]) as conf:
        conf_map = conf.read(1)
    np.testing.assert_allclose(conf_map[valid], confidence(probs)[valid], atol=1e-5)
    assert np.abs(confidence(narrow) - confidence(probs))[valid].max() > 1e-4
    assert summary.parameters["blend"] == blend


def test_row_buffer_stays_one_patch_high(files, tmp_path, monkeypatch):
    """Memory: the blending buffer never holds more than one patch of rows."""
    heights = []
    real_extend = WindowBlender._extend_to

    def recording(self, bottom):
        real_extend(self, bottom)
        heights.append(len(self.weights))

    monkeypatch.setattr(WindowBlender, "_extend_to", recording)
    with source_of(files) as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out", DeployOptions(stride=4),
                               progress=False)
    assert summary.pixels["windows"] == len(heights)  # one call per window
    assert max(heights) == P


def _read_maps(summary):
    with rasterio.open(summary.outputs["glacier_class.tif"]) as classes, \
            rasterio.open(summary.outputs["confidence.tif"]) as conf:
        return classes.read(1), conf.read(1)


def test_prefetching_equals_reading_in_turn(files, tmp_path, monkeypatch):
    threads = []
    real = SceneSource.read_window

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SceneSource, "read_window", recording)
    maps = {}
    with source_of(files) as source:
        for prefetch in (True, False):
            threads.clear()
            options = DeployOptions(stride=5, batch_size=3, precision="float32",
                                    prefetch=prefetch)
            summary = deploy_scene(source, files["model"], tmp_path / f"p{prefetch}", options,
                                   calibrator_path=files["calibrator"], progress=False)
            assert summary.parameters["prefetch"] is prefetch
            assert summary.parameters["precision"] == "float32"
            maps[prefetch] = _read_maps(summary)
            window_reads = [name for name in threads if name != "MainThread"]
            # check_not_empty reads strips on the main thread; windows come from the reader.
            assert bool(window_reads) is prefetch
            assert all(name.startswith("deploy-read") for name in window_reads)
    np.testing.assert_array_equal(maps[True][0], maps[False][0])
    np.testing.assert_array_equal(maps[True][1], maps[False][1])


def test_bfloat16_deployment_is_close_to_float32(files, tmp_path):
    maps = {}
    with source_of(files) as source:
        for precision in ("float32", "bfloat16"):
            summary = deploy_scene(source, files["model"], tmp_path / precision,
                                   DeployOptions(precision=precision), progress=False)
            assert summary.parameters["precision"] == precision
            assert summary.parameters["stride"] == 8  # default: half the 16 px patch
            maps[precision] = _read_maps(summary)
    valid = maps["float32"][0] != 255
    agree = (maps["float32"][0] == maps["bfloat16"][0])[valid].mean()
    difference = np.abs(maps["float32"][1] - maps["bfloat16"][1])[valid]
    assert agree > 0.98 and difference.max() < 0.05
    assert difference.max() > 0  # the bfloat16 copy really ran


def test_polygons_area_matches_raster(files, tmp_path):
    with source_of(files) as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out",
                               DeployOptions(vector_strip_rows=4),
                               calibrator_path=files["calibrator"], progress=False)
        coarse = deploy_scene(source, files["model"], tmp_path / "coarse",
                              calibrator_path=files["calibrator"], progress=False)
    polygons = gpd.read_file(summary.outputs["glaciers.gpkg"], layer="glaciers")
    assert polygons.crs.to_string() == CRS
    assert set(polygons.columns) >= {"area_km2", "mean_confidence", "estimated_iou", "scene",
                                     "date", "geometry"}
    assert len(polygons) == summary.polygon_count > 1
    pixel_km2 = 30.0 * 30.0 / 1e6
    raster_area = summary.pixels["glacier"] * pixel_km2
    assert summary.glacier_area_km2 == pytest.approx(raster_area)
    assert abs(polygons["area_km2"].sum() - raster_area) <= len(polygons) * pixel_km2
    assert (polygons["pixel_count"] * pixel_km2).sum() == pytest.approx(raster_area)
    assert polygons.geometry.is_valid.all()
    assert polygons.geom_type.isin(["Polygon"]).all()
    assert (polygons["scene"] == "optical").all()
    assert polygons["estimated_iou"].iloc[0] == pytest.approx(summary.estimated_iou)
    assert polygons["mean_confidence"].between(0, 1).all()
    # Vectorising in 4-row strips merges components across seams: same result as one pass.
    whole = gpd.read_file(coarse.outputs["glaciers.gpkg"], layer="glaciers")
    assert sorted(whole["pixel_count"]) == sorted(polygons["pixel_count"])
    np.testing.assert_allclose(sorted(whole["area_km2"]), sorted(polygons["area_km2"]))
    np.testing.assert_allclose(sorted(whole["mean_confidence"]),
                               sorted(polygons["mean_confidence"]), atol=1e-6)


def test_sensor_mismatch_names_the_flag(files, tmp_path):
    model = tiny_model(tmp_path / "thermal.keras", sensors=("optical", "thermal"))
    with source_of(files) as source:
        with pytest.raises(DeploymentError, match=r"needs the \['thermal'\].*--thermal FILE"):
            deploy_scene(source, model, tmp_path / "out", progress=False)


def test_scene_smaller_than_window(tmp_path, files):
    optical, dem = scene_arrays(10, 40)
    small = write_raster(tmp_path / "small.tif", optical)
    with SceneSource(small, OPTICAL_BANDS, dem=write_raster(tmp_path / "d.tif", dem)) as source:
        with pytest.raises(SceneError, match=r"10 x 40 pixels.*minimum scene size .* 16 x 16"):
            deploy_scene(source, files["model"], tmp_path / "out", progress=False)


def test_unwritable_output_directory(files, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with source_of(files) as source:
        with pytest.raises(DeploymentError, match=r"a_file/out is not writable.*--out"):
            deploy_scene(source, files["model"], blocker / "out", progress=False)


def test_bad_model_file_and_parameters(files, tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with source_of(files) as source:
        with pytest.raises(DeploymentError, match=r"broken.keras: cannot be loaded"):
            deploy_scene(source, broken, tmp_path / "out", progress=False)
        with pytest.raises(DeploymentError, match=r"missing.keras does not exist"):
            deploy_scene(source, tmp_path / "missing.keras", tmp_path / "out", progress=False)
        with pytest.raises(DeploymentError, match=r"stride must be in \[1, 16\]"):
            deploy_scene(source, files["model"], tmp_path / "out", DeployOptions(stride=17),
                         progress=False)
    with pytest.raises(DeploymentError, match=r"precision='half'.*--precision"):
        DeployOptions(precision="half")
    with pytest.raises(DeploymentError, match=r"blend='box'.*--blend"):
        DeployOptions(blend="box")
    with pytest.raises(DeploymentError, match=r"batch_size \(>= 1\).*out of range: 0, 0, 1024"):
        DeployOptions(batch_size=0)


def test_all_nodata_scene_is_refused(files, tmp_path):
    empty = write_raster(tmp_path / "empty.tif", np.full((6, 20, 20), np.nan))
    with SceneSource(empty, OPTICAL_BANDS, dem=files["dem"]) as source:
        with pytest.raises(SceneError, match=r"every pixel is nodata or NaN"):
            deploy_scene(source, files["model"], tmp_path / "out", progress=False)


def test_coordinates_are_radians(files, tmp_path, monkeypatch):
    vector = coordinate_vector(lat=30.0, lon=90.0)
    np.testing.assert_allclose(vector, [0.5, math.sqrt(3) / 2, 1.0, 0.0], atol=1e-6)
    model = tiny_model(tmp_path / "coords.keras", location_size=4)
    seen = []
    real = deploy.predict_windows

    def recording(model, batch, **kwargs):
        seen.append(kwargs["location"])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(deploy, "predict_windows", recording)
    with source_of(files) as source:
        summary = deploy_scene(source, model, tmp_path / "out", progress=False)
        lon, lat = source.center_lonlat(0, 0, P, P)
    assert summary.model["location"] == "coordinates"
    first = seen[0][0]
    np.testing.assert_array_equal(first, coordinate_vector(lat, lon))
    assert first[0] == pytest.approx(math.sin(math.radians(lat)), abs=1e-6)
    with source_of(files) as source:
        with pytest.raises(DeploymentError, match=r"drop --region-vector"):
            deploy_scene(source, model, tmp_path / "o2", region_vector_path=tmp_path / "r.json",
                         progress=False)


def test_region_vector_is_repeated_per_window(files, tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "region.keras", location_size=12)
    vector = np.zeros(12)
    vector[5] = 1.0
    path = save_region_vector(vector, tmp_path / "region.json")
    seen = []
    real = deploy.predict_windows

    def recording(model, batch, **kwargs):
        seen.append(kwargs["location"])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(deploy, "predict_windows", recording)
    with source_of(files) as source:
        with pytest.raises(DeploymentError, match=r"pass --region-vector JSON"):
            deploy_scene(source, model, tmp_path / "o1", progress=False)
        summary = deploy_scene(source, model, tmp_path / "o2", region_vector_path=path,
                               progress=False)
    assert summary.model["location"] == "region"
    assert all(np.array_equal(location, vector.astype("float32")) for location in seen)


def test_model_card_norm_stats_are_used(files, tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    model = tiny_model(model_dir / "model.keras")
    stats = {"sensors": {"optical": {"min": [0.0] * 6, "max": [2.0] * 6},
                         "dem": {"min": [0.0, 0.0], "max": [5000.0, 90.0]}}}
    (model_dir / "model_card.json").write_text(json.dumps({"norm_stats": stats}))
    with source_of(files) as source:
        with_card = deploy_scene(source, model, tmp_path / "a", progress=False)
        paper = deploy_scene(source, files["model"], tmp_path / "b", progress=False)
    assert with_card.model["norm_stats"].endswith("model_card.json")
    assert paper.model["norm_stats"] == "paper"
    assert with_card.pixels["glacier"] != paper.pixels["glacier"]


def test_cli_arguments(files, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    args = parser.parse_args([
        "--optical", str(files["optical"]), "--bands", ",".join(OPTICAL_BANDS),
        "--dem", str(files["dem"]), "--model", str(files["model"]),
        "--calibrator", str(files["calibrator"]), "--stride", "8", "--batch-size", "4",
        "--no-progress", "--date", "2020-08-01", "--out", str(tmp_path / "cli"),
        "--precision", "float32",
    ])
    assert deploy_from_args(args) == 0
    assert "estimated IoU" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["parameters"]["precision"] == "float32"
    assert parser.parse_args(["--optical", "o.tif", "--bands", "b", "--model", "m.keras",
                              "--out", "o"]).precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--optical", "o.tif", "--bands", "b", "--model", "m.keras",
                           "--out", "o", "--precision", "float16"])
    polygons = gpd.read_file(tmp_path / "cli" / "glaciers.gpkg")
    assert (polygons["date"] == "2020-08-01").all()
    bad = parser.parse_args([
        "--optical", str(files["optical"]), "--bands", "red,green,blue,nir",
        "--model", str(files["model"]), "--out", str(tmp_path / "bad"),
    ])
    assert deploy_from_args(bad) == 2
    assert "lists 4 names" in capsys.readouterr().err
    no_dem = parser.parse_args([
        "--optical", str(files["optical"]), "--bands", ",".join(OPTICAL_BANDS),
        "--model", str(files["model"]), "--out", str(tmp_path / "nodem"), "--no-progress",
    ])
    assert deploy_from_args(no_dem) == 2
    assert "--dem FILE" in capsys.readouterr().err
