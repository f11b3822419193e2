"""Scene deployment: strip-wise inference, output rasters, outlines, summary and errors."""

import argparse
import json
import logging
import math
import signal
import subprocess
import threading
import zipfile

import geopandas as gpd
import keras
import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
from keras import layers
from rasterio.transform import from_origin

import glacier_mapping.deploy as deploy
from glacier_mapping import scene_inference, store
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
from glacier_mapping.runtime import tensorflow_backend

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
    real_finish = scene_inference._finish

    def recording(rows, calibrator, spread):
        finished.append(rows)
        return real_finish(rows, calibrator, spread)

    monkeypatch.setattr(scene_inference, "_finish", recording)
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
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    fix = r"outputs/<profile>/models/<name>/model.keras.*glacier-mapping import-weights"
    with source_of(files) as source:
        for model in (broken, other_zip):
            with pytest.raises(DeploymentError,
                               match=rf"{model.name} is not a Keras model file.*{fix}"):
                deploy_scene(source, model, tmp_path / "out", progress=False)
        with pytest.raises(DeploymentError, match=r"missing.keras does not exist"):
            deploy_scene(source, tmp_path / "missing.keras", tmp_path / "out", progress=False)
        with pytest.raises(DeploymentError, match=r"--stride must be in \[1, 16\]"):
            deploy_scene(source, files["model"], tmp_path / "out", DeployOptions(stride=17),
                         progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DeploymentError, match=r"precision='half'.*--precision"):
        DeployOptions(precision="half")
    with pytest.raises(DeploymentError, match=r"blend='box'.*--blend"):
        DeployOptions(blend="box")


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("batch_size", 0, "--batch-size"), ("mc_passes", -1, "--mc-passes"),
    ("stride", 0, "--stride"), ("patch_size", 0, "--patch-size"), ("batch_size", 2.5,
                                                                      "--batch-size"),
    ("vector_strip_rows", 0, "vector_strip_rows"),
])
def test_option_errors_name_the_command_line_option(field, value, flag):
    with pytest.raises(DeploymentError, match=rf"^{flag} must be an integer >= \d .*got "
                                              rf"{value}; e\.g\. {flag} \d+\.$"):
        DeployOptions(**{field: value})


def test_cli_option_errors_name_the_option_and_create_nothing(files, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    base = ["--optical", str(files["optical"]), "--bands", ",".join(OPTICAL_BANDS),
            "--dem", str(files["dem"]), "--model", str(files["model"]), "--no-progress",
            "--out", str(tmp_path / "new" / "out")]
    for extra, flag in ((["--batch-size", "0"], "--batch-size"),
                        (["--mc-passes", "-2"], "--mc-passes"),
                        (["--stride", "40"], "--stride"),
                        (["--optical-scale", "0"], "--optical-scale"),
                        (["--date", "yesterday"], "--date")):
        assert deploy_from_args(parser.parse_args(base + extra)) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"error: {flag} " in error
        assert "mc_passes" not in error and "vector_strip_rows" not in error
    assert not (tmp_path / "new").exists()


def _write_calibrator(path, **fields):
    path.write_text(json.dumps({"kind": "temperature", "temperature": 1.5, "bounds": [0.05, 20.0],
                                **fields}))
    return path


@pytest.mark.parametrize(("make_input", "pattern"), [
    (lambda f, t: {"model_path": t / "garbage.keras"},
     r"garbage.keras is not a Keras model file"),
    (lambda f, t: {"calibrator_path": _write_calibrator(t / "abc.json", temperature="abc")},
     r"--calibrator: .*abc.json: invalid temperature calibrator: field 'temperature' must be "
     r"a finite number > 0; got 'abc'"),
    (lambda f, t: {"calibrator_path": _write_calibrator(t / "nan.json", temperature=math.nan)},
     r"nan.json: .*field 'temperature' .*got nan"),
    (lambda f, t: {"calibrator_path": t / "none.json"}, r"--calibrator: No calibrator file"),
    (lambda f, t: {"region_vector_path": t / "none.json"}, r"drop --region-vector"),
    (lambda f, t: {"model_path": tiny_model(t / "rv.keras", location_size=12),
                   "region_vector_path": t / "none.json"},
     r"--region-vector: No region vector at .*none.json"),
    (lambda f, t: {"options": DeployOptions(stride=17)}, r"--stride must be in \[1, 16\]"),
    (lambda f, t: {"model_path": tiny_model(t / "th.keras", sensors=("optical", "thermal"))},
     r"--thermal FILE"),
    (lambda f, t: {"norm_stats": t / "none.json"}, r"none.json do not exist"),
])
def test_refused_runs_create_nothing(files, tmp_path, make_input, pattern):
    (tmp_path / "garbage.keras").write_bytes(b"\x00garbage" * 100)
    kwargs = {"model_path": files["model"], **make_input(files, tmp_path)}
    before = sorted(tmp_path.rglob("*"))
    with source_of(files) as source:
        with pytest.raises((DeploymentError, SceneError), match=pattern):
            deploy_scene(source, kwargs.pop("model_path"), tmp_path / "a" / "out",
                         progress=False, **kwargs)
    assert sorted(tmp_path.rglob("*")) == before  # not even the output directory


def test_partial_dem_is_refused_unless_allowed(files, tmp_path, caplog):
    height, width = files["shape"]
    _, dem = scene_arrays(height, width)
    half = write_raster(tmp_path / "half_dem.tif", dem[:, : width // 2])
    with SceneSource(files["optical"], OPTICAL_BANDS, dem=half) as source:
        with pytest.raises(DeploymentError, match=r"half_dem.tif \(--dem\) covers 50.0 % of "
                                                  r"the optical scene.*--allow-partial-coverage"):
            deploy_scene(source, files["model"], tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()
        caplog.set_level(logging.WARNING, logger="glacier_mapping.deploy")
        summary = deploy_scene(source, files["model"], tmp_path / "out",
                               DeployOptions(allow_partial_coverage=True), progress=False)
    assert summary.coverage == {str(half): pytest.approx(0.5, abs=0.001)}
    assert summary.parameters["allow_partial_coverage"] is True
    assert any("covers 50.0 %" in note for note in summary.notes)
    assert any("covers 50.0 %" in record.getMessage() for record in caplog.records)
    saved = deploy.read_summary(tmp_path / "out")
    assert saved["coverage"] == {str(half): pytest.approx(0.5, abs=0.001)}
    classes, _ = _read_maps(summary)
    assert (classes[:, width // 2 :] == 255).all()  # beyond the DEM (and its last column:
    assert (classes[:, 1 : width // 2 - 1] != 255).all()  # no slope there): nodata


def test_no_record_count_line_when_writing_outlines(files, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with source_of(files) as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out", progress=False)
    assert summary.polygon_count > 0
    assert not [r for r in caplog.records if "records" in r.getMessage()]
    assert deploy._not_a_record_count not in logging.getLogger("pyogrio._io").filters


def _snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


def test_failed_run_keeps_the_previous_set_or_leaves_nothing(files, tmp_path, monkeypatch):
    with source_of(files) as source:
        deploy_scene(source, files["model"], tmp_path / "out", progress=False)
        before = _snapshot(tmp_path / "out")

        def failing(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(deploy, "_vectorise", failing)
        for out in (tmp_path / "out", tmp_path / "fresh" / "out"):
            with pytest.raises(OSError, match="disk full"):
                deploy_scene(source, files["model"], out, DeployOptions(stride=5),
                             progress=False)
    assert _snapshot(tmp_path / "out") == before
    assert not (tmp_path / "fresh").exists()


def test_rerun_removes_leftovers_of_killed_runs(files, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    (out / f".staging-{dead.pid}-abc").mkdir(parents=True)
    (out / f".staging-{dead.pid}-abc" / "glacier_class.tif").write_bytes(b"x")
    (out / ".staging-1-live").mkdir()  # a running process's: kept
    for name in (f".glacier_class.tif.part-{dead.pid}", f".confidence.tif.part-{dead.pid}",
                 "glacier_class.tif", "notes.txt"):
        (out / name).write_bytes(b"old")
    with source_of(files) as source:
        deploy_scene(source, files["model"], out, progress=False)
    assert sorted(path.name for path in out.iterdir()) == [
        ".staging-1-live", "confidence.tif", "glacier_class.tif", "glaciers.gpkg", "item.json",
        "notes.txt", "summary.json"]
    assert deploy.read_summary(out)["scene"] == "optical"


def test_read_summary_needs_the_complete_set(files, tmp_path):
    with source_of(files) as source:
        deploy_scene(source, files["model"], tmp_path / "out", progress=False)
    assert deploy.read_summary(tmp_path / "out")["pixels"]["valid"] == 45 * 52 - 1
    (tmp_path / "out" / "summary.json").unlink()
    with pytest.raises(DeploymentError, match=r"out holds no complete deployment \(summary.json "
                                              r"missing\)"):
        deploy.read_summary(tmp_path / "out")


def test_signal_during_publishing_waits_for_the_complete_set(files, tmp_path, monkeypatch,
                                                             capsys):
    real = store.atomic_write_json

    def signalled(path, data):  # SIGTERM arrives between moving the rasters and the summary
        signal.raise_signal(signal.SIGTERM)
        return real(path, data)

    monkeypatch.setattr(store, "atomic_write_json", signalled)
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    args = parser.parse_args([
        "--optical", str(files["optical"]), "--bands", ",".join(OPTICAL_BANDS),
        "--dem", str(files["dem"]), "--model", str(files["model"]), "--no-progress",
        "--out", str(tmp_path / "out")])
    previous = signal.getsignal(signal.SIGTERM)
    assert deploy_from_args(args) == 143
    assert signal.getsignal(signal.SIGTERM) is previous
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert deploy.read_summary(tmp_path / "out")["scene"] == "optical"
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]


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
    real = tensorflow_backend.predict_windows

    def recording(model, batch, **kwargs):
        seen.append(kwargs["location"])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(tensorflow_backend, "predict_windows", recording)
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
    real = tensorflow_backend.predict_windows

    def recording(model, batch, **kwargs):
        seen.append(kwargs["location"])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(tensorflow_backend, "predict_windows", recording)
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


def test_deploy_writes_a_stac_item_of_its_outputs(files, tmp_path):
    with source_of(files, date="2021-08-14", name="scene_a") as source:
        summary = deploy_scene(source, files["model"], tmp_path / "out",
                               DeployOptions(stride=8, precision="float32"),
                               calibrator_path=files["calibrator"], progress=False)
    item = pystac.Item.from_file(str(tmp_path / "out" / "item.json"))
    # the core STAC item JSON schema, bundled with pystac (extension schemas need the network)
    pystac.validation.validate_dict(item.to_dict(), extensions=[])
    assert item.id == "scene_a_glaciers"
    assert item.datetime.date().isoformat() == "2021-08-14"
    assert set(item.assets) == {"glacier_class", "confidence", "glaciers", "summary"}
    for asset in item.assets.values():  # relative links that resolve to the published files
        assert (tmp_path / "out" / asset.href).is_file()
    assert item.properties["proj:shape"] == [45, 52]
    assert item.properties["proj:code"] == CRS
    left, bottom, right, top = item.bbox
    assert 8.9 < left < right < 9.1 and 46.0 < bottom < top < 46.1  # UTM 32N near 9 E
    model = item.properties["glacier_mapping:model"]
    assert model["sha256"] == json.loads((tmp_path / "out" / "summary.json").read_text())[
        "model"]["sha256"]
    assert item.properties["glacier_mapping:estimated_iou"] == pytest.approx(
        summary.estimated_iou)
