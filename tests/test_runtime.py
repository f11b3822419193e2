"""Inference backends: exports beside the model, equal to Keras, re-exported on change."""

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.data.tiles import make_tile, write_tiles
from glacier_mapping.deploy import DeploymentError, DeployOptions, deploy_scene
from glacier_mapping.models import build_model
from glacier_mapping.runtime import (
    BackendError,
    artifacts,
    backends,
    choose_backend,
    load_backend,
    quantise,
)
from glacier_mapping.runtime.backends import predict_image

P = 64
EXPORTED = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny GlaViTU (custom layers: MC dropout, positional embedding, GELU) and DeepLabv3+
    with a location input, each exported once for both runtimes."""
    folder = tmp_path_factory.mktemp("runtime")
    paths = {}
    for architecture, location in (("glavitu", None), ("deeplab", 4)):
        keras.utils.set_random_seed(0)
        model = build_model(architecture, ("optical", "dem"), P, "tiny", location_size=location)
        paths[architecture] = folder / architecture / "model.keras"
        paths[architecture].parent.mkdir()
        model.save(paths[architecture])
        # both formats in one export child (one TensorFlow import)
        artifacts.run_export_child(["glacier_mapping.runtime.export", str(paths[architecture]),
                                    "onnx", "openvino"])
    return paths


def windows(count=3, location=False, seed=1):
    rng = np.random.default_rng(seed)
    batch = {"optical": rng.random((count, P, P, 6), dtype=np.float32),
             "dem": rng.random((count, P, P, 2), dtype=np.float32)}
    return batch, (rng.random(4, dtype=np.float32) if location else None)


@pytest.mark.parametrize("architecture", ["glavitu", "deeplab"])
@pytest.mark.parametrize("tta", [False, True])
def test_exported_backends_equal_keras(models, architecture, tta):
    path = str(models[architecture])
    batch, location = windows(location=architecture == "deeplab")
    expected = load_backend(path, "tensorflow").predict(batch, location, tta=tta)
    assert expected.shape == (3, P, P, 2)
    for backend in EXPORTED:
        runner = load_backend(path, backend)
        assert runner.backend == backend
        probs = runner.predict(batch, location, tta=tta)
        assert probs.dtype == np.float32 and probs.shape == expected.shape
        assert np.abs(probs - expected).max() < 1e-4, backend


def test_export_record_names_source_checksum_and_versions(models):
    path = models["glavitu"]
    record = json.loads(path.with_name("model.openvino.xml.json").read_text())
    assert record["source_sha256"] == artifacts.file_digest(path)
    assert set(record["files"]) == {"model.openvino.xml", "model.openvino.bin"}
    assert record["inputs"] == {"optical": [P, P, 6], "dem": [P, P, 2]}
    assert record["check"]["max_abs_difference"] < 1e-4
    assert {"tf2onnx", "openvino", "keras"} <= set(record["versions"])


def test_export_is_reused_and_redone_after_the_weights_change(models, tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    shutil.copy(models["glavitu"], path)
    for name in ("model.onnx", "model.onnx.json"):
        shutil.copy(models["glavitu"].with_name(name), tmp_path / name)
    calls = []
    original = artifacts.run_export_child
    monkeypatch.setattr(artifacts, "run_export_child",
                        lambda arguments: calls.append(arguments) or original(arguments))
    batch, _ = windows()
    before = load_backend(str(path), "onnxruntime").predict(batch)
    assert calls == []  # the copied export matches the copied model
    model = keras.saving.load_model(path, compile=False)
    layer = model.get_layer("output")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + np.array([0.0, 1.0], np.float32)])  # more glacier
    model.save(path)
    after = load_backend(str(path), "onnxruntime").predict(batch)
    assert len(calls) == 1
    expected = load_backend(str(path), "tensorflow").predict(batch)
    assert np.abs(after - expected).max() < 1e-4
    assert np.abs(after - before).max() > 1e-3
    record = json.loads((tmp_path / "model.onnx.json").read_text())
    assert record["source_sha256"] == artifacts.file_digest(path)


def test_a_damaged_export_is_not_used(models, tmp_path):
    path = tmp_path / "model.keras"
    shutil.copy(models["glavitu"], path)
    for name in ("model.onnx", "model.onnx.json"):
        shutil.copy(models["glavitu"].with_name(name), tmp_path / name)
    assert artifacts.read_export(path, "onnx") is not None
    with open(tmp_path / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    assert artifacts.read_export(path, "onnx") is None


def test_exported_backends_run_without_tensorflow(models):
    script = (
        "import sys, numpy as np\n"
        "from glacier_mapping.runtime import load_backend\n"
        "for name in ('onnxruntime', 'openvino'):\n"
        f"    runner = load_backend({str(models['glavitu'])!r}, name)\n"
        f"    runner.predict({{'optical': np.zeros((2, {P}, {P}, 6), np.float32),\n"
        f"                    'dem': np.zeros((2, {P}, {P}, 2), np.float32)}})\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_mc_dropout_needs_tensorflow(models):
    batch, _ = windows()
    runner = load_backend(str(models["glavitu"]), "onnxruntime")
    with pytest.raises(BackendError, match="--mc-passes 2 needs --backend tensorflow"):
        runner.predict(batch, mc_passes=2)


def test_missing_runtime_and_bad_names_are_explained(models, monkeypatch):
    with pytest.raises(BackendError, match="not one of"):
        choose_backend("tensorrt")
    monkeypatch.setattr(backends, "installed", lambda backend: backend == "tensorflow")
    with pytest.raises(BackendError, match="pip install openvino"):
        choose_backend("openvino")
    assert choose_backend("auto") == "tensorflow"
    with pytest.raises(BackendError, match="does not run --precision bfloat16"):
        backends.resolve_runtime_precision("onnxruntime", "bfloat16")


def test_int8_needs_a_quantised_export(models):
    with pytest.raises(BackendError, match="No int8 onnx export"):
        load_backend(str(models["glavitu"]), "onnxruntime", "int8")


def test_missing_model_file(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        load_backend(str(tmp_path / "none.keras"), "onnxruntime")


def write_scene(folder, height, width, seed=0):
    """Optical (6 bands, reflectance-like) and DEM GeoTIFFs with bright blobs to map."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    optical = rng.uniform(0.05, 0.15, (6, height, width)).astype("float32")
    optical[:3] += 0.7 * (np.sin(rows / 9.0) * np.cos(cols / 11.0) > 0.3)
    dem = (2000.0 + 2.0 * rows + rng.normal(0, 1, (height, width)))[None].astype("float32")
    paths = {}
    for name, data in (("optical", optical), ("dem", dem)):
        paths[name] = folder / f"{name}_{height}x{width}.tif"
        with rasterio.open(paths[name], "w", driver="GTiff", height=height, width=width,
                           count=len(data), dtype="float32", crs="EPSG:32632",
                           transform=from_origin(500_000.0, 5_100_000.0, 30.0, 30.0)) as out:
            out.write(data)
    return paths


def deployed(paths, model, out, backend):
    with SceneSource(paths["optical"], OPTICAL_BANDS, dem=paths["dem"]) as source:
        summary = deploy_scene(source, model, out, DeployOptions(
            stride=32, backend=backend, precision="float32"), progress=False)
    with rasterio.open(summary.outputs["glacier_class.tif"]) as classes, \
            rasterio.open(summary.outputs["confidence.tif"]) as conf:
        return summary, classes.read(1), conf.read(1)


def test_deploy_with_each_backend_equals_tensorflow(models, tmp_path):
    paths = write_scene(tmp_path, 150, 170)
    model = models["glavitu"]
    _, classes, conf = deployed(paths, model, tmp_path / "tensorflow", "tensorflow")
    assert 0.05 < (classes == 1).mean() < 0.95  # both classes present
    for backend in EXPORTED:
        summary, other_classes, other_conf = deployed(paths, model, tmp_path / backend, backend)
        assert summary.parameters["backend"] == backend
        assert summary.parameters["precision"] == "float32"
        assert json.loads((tmp_path / backend / "summary.json").read_text())[
            "parameters"]["backend"] == backend
        assert np.nanmax(np.abs(other_conf - conf)) < 1e-4, backend
        assert (other_classes == classes).mean() > 0.9999, backend


def test_deploy_refuses_mc_dropout_with_an_exported_backend(models, tmp_path):
    paths = write_scene(tmp_path, 64, 64)
    with SceneSource(paths["optical"], OPTICAL_BANDS, dem=paths["dem"]) as source:
        with pytest.raises(DeploymentError, match="--mc-passes 3 needs --backend tensorflow"):
            deploy_scene(source, models["glavitu"], tmp_path / "out",
                         DeployOptions(backend="openvino", mc_passes=3), progress=False)
    with pytest.raises(DeploymentError, match="backend='tensorrt' is not one of"):
        DeployOptions(backend="tensorrt")


#: A child deploys one scene through the command line and reports its memory and imports.
DEPLOY_CHILD = """
import json, sys
from pathlib import Path
from glacier_mapping.cli import main

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0

model, optical, dem, out, backend = sys.argv[1:]
try:
    main(["deploy", "--model", model, "--optical", optical,
          "--bands", "blue,green,red,nir,swir1,swir2", "--dem", dem, "--out", out,
          "--backend", backend, "--precision", "float32", "--stride", "32", "--no-progress"])
except SystemExit as stop:
    if stop.code:
        raise
print(json.dumps({"peak_mb": status("VmHWM"),
                  "heavy": [m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules],
                  "backend": json.loads((Path(out) / "summary.json").read_text())[
                      "parameters"]["backend"]}))
"""


@pytest.mark.parametrize("backend", EXPORTED)
def test_deploy_command_without_tensorflow_in_bounded_memory(models, tmp_path, backend):
    """The CLI with an exported backend never imports TensorFlow, and its peak RSS for a 16x
    larger scene (same width, 16x the rows) stays within 1.5x of the small scene's."""
    results = {}
    for rows in (128, 2048):
        paths = write_scene(tmp_path, rows, 512)
        done = subprocess.run(
            [sys.executable, "-c", DEPLOY_CHILD, str(models["glavitu"]), str(paths["optical"]),
             str(paths["dem"]), str(tmp_path / f"out{rows}"), backend],
            capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        results[rows] = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = results[128], results[2048]
    assert small["heavy"] == [] and large["heavy"] == [], results
    assert small["backend"] == large["backend"] == backend
    assert large["peak_mb"] <= 1.5 * small["peak_mb"], results


def tile_file(path, runner=None, count=3, seed=0):
    """Tiles of random features; labels from ``runner``'s float32 glacier map (or none)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for index in range(count):
        features = {"optical": rng.random((128, 128, 6), dtype=np.float32),
                    "dem": rng.random((128, 128, 2), dtype=np.float32)}
        labels = None if runner is None else (
            predict_image(runner, features)[..., 1] >= 0.5).astype(np.uint8)
        tiles.append(make_tile(f"ALP-{index}-0", "ALP", features, labels,
                               (10.0, 10.1, 46.0, 46.1), P))
    write_tiles(path, tiles)
    return path


@pytest.fixture(scope="module")
def quantisable(models, tmp_path_factory):
    """A copy of the tiny GlaViTU with its float32 exports, and train / test tile files."""
    folder = tmp_path_factory.mktemp("int8")
    for path in models["glavitu"].parent.iterdir():
        if not path.name.endswith(".lock"):
            shutil.copy(path, folder / path.name)
    model = folder / "model.keras"
    reference = load_backend(str(model), "onnxruntime")
    return {"model": model, "train": tile_file(folder / "train.hdf5", seed=1),
            "test": tile_file(folder / "test.hdf5", reference, seed=2)}


def test_int8_is_published_only_within_the_iou_tolerance(quantisable, monkeypatch, capsys):
    model, train, test = (str(quantisable[key]) for key in ("model", "train", "test"))
    try:
        quantise.main([model, "--train", train, "--test", test, "--windows", "8"])
    except SystemExit as stop:
        assert "keep float32" in str(stop.code)
    lines = capsys.readouterr().out.splitlines()
    for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        line = next(line for line in lines if line.startswith(f"{fmt}:"))
        float32, int8 = (float(word.rstrip(",:")) for word in line.split()[4:7:2])
        assert float32 == pytest.approx(1.0)  # the test labels are the float32 model's map
        accepted = abs(int8 - float32) <= quantise.IOU_TOLERANCE
        assert line.endswith("accepted" if accepted else "refused")
        record = artifacts.read_export(quantisable["model"], fmt, quantised=True)
        assert (record is not None) == accepted
        if accepted:
            assert record.record["quantisation"]["test"]["iou_int8"] == pytest.approx(int8)
            batch, _ = windows()
            probs = load_backend(model, backend, "int8").predict(batch)
            assert np.abs(probs - load_backend(model, backend).predict(batch)).max() < 0.2
    monkeypatch.setattr(quantise, "IOU_TOLERANCE", -1.0)  # no model can pass
    for path in quantisable["model"].parent.glob("*int8*"):
        path.unlink()
    with pytest.raises(SystemExit, match="keep float32"):
        quantise.main([model, "--train", train, "--test", test, "--windows", "4"])
    assert not list(quantisable["model"].parent.glob("*int8*"))
