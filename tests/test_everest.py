"""Tests of the chapter-08 glue: benchmark-scene deployment helpers and the Everest experiment."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from glacier_mapping.calibration import TemperatureCalibrator, find_calibrator
from glacier_mapping.chapters import scene_deployment as ch08
from glacier_mapping.config import load_profile
from glacier_mapping.data.scenes import normalise_features
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.evaluation import metrics_from_counts
from glacier_mapping.experiments import everest as ev
from glacier_mapping.metrics import count_rows
from glacier_mapping.registry import RealSceneNotAvailable, everest_scene

CRS = "EPSG:32632"
TRANSFORM = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 5_000_000.0)


def _write(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    array = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2],
                       count=array.shape[0], dtype=array.dtype, crs=CRS, transform=TRANSFORM,
                       nodata=nodata) as dataset:
        dataset.write(array)
    return path


@pytest.fixture(scope="module")
def everest() -> ev.EverestData:
    """The real Everest scene, or a skip when the shared kit is absent."""
    try:
        return ev.load_everest(everest_scene())
    except RealSceneNotAvailable as error:
        pytest.skip(f"Everest scene not available (shared/real_scenes absent): {error}")


# --------------------------------------------------------------------------- synthetic helpers


def test_find_calibrator_skips_other_json(tmp_path: Path) -> None:
    assert find_calibrator(tmp_path) is None
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "a_reliability.json").write_text(json.dumps({"bins": [1, 2]}))
    assert find_calibrator(tmp_path) is None
    saved = TemperatureCalibrator(temperature=1.5).save(folder / "b_model.json")
    assert find_calibrator(tmp_path) == saved
    assert find_calibrator(tmp_path, "b_model") == saved
    assert find_calibrator(tmp_path, "other_model") is None


def test_pick_scene_prefers_spatial(tmp_path: Path) -> None:
    folders = []
    for name, kind in (("ALP_2023-08-31", "temporal"), ("SC_2018-08-31", "spatial")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "scene.json").write_text(json.dumps({"region": name[:3], "kind": kind}))
        folders.append(folder)
    assert ch08.pick_scene(folders).name == "SC_2018-08-31"
    assert ch08.pick_scene(folders, "ALP_2023-08-31").name == "ALP_2023-08-31"
    with pytest.raises(ValueError, match="No scene"):
        ch08.pick_scene(folders, "NZ_2000-01-01")
    with pytest.raises(ValueError, match="no independent scenes"):
        ch08.pick_scene([])


def test_compare_with_reference_hand_counts(tmp_path: Path) -> None:
    predicted = np.array([[1, 1, 0], [0, 255, 1]], np.uint8)
    reference = np.array([[1, 0, 0], [1, 1, 255]], np.uint8)
    counts = ch08.compare_with_reference(_write(tmp_path / "p.tif", predicted, 255),
                                       _write(tmp_path / "r.tif", reference, 255))
    # valid pixels: (0,0) TP, (0,1) FP, (0,2) TN, (1,0) FN; (1,1) and (1,2) are nodata
    assert counts == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}


def test_compare_with_reference_rejects_other_grid(tmp_path: Path) -> None:
    first = _write(tmp_path / "p.tif", np.zeros((4, 4), np.uint8))
    second = _write(tmp_path / "r.tif", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="same grid"):
        ch08.compare_with_reference(first, second)


def test_largest_polygons_and_outlines(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"glacier_id": [1, 2, 3], "area_km2": [0.5, 2.0, 1.0], "pixel_count": [5, 20, 10],
         "mean_confidence": [0.9, 0.8, 0.7]},
        geometry=[box(500_000, 4_999_000, 500_300, 4_999_300),
                  box(500_000, 4_999_700, 500_600, 5_000_000),
                  box(500_300, 4_999_000, 500_600, 4_999_300)], crs=CRS)
    path = tmp_path / "glaciers.gpkg"
    frame.to_file(path, layer="glaciers", driver="GPKG")
    table = ch08.largest_polygons(path, 2)
    assert table["glacier_id"].tolist() == [2, 3]
    assert list(table.columns) == ["glacier_id", "area_km2", "mean_confidence", "pixel_count"]
    grid = {"transform": list(TRANSFORM)[:6], "height": 40}  # bottom at 4_998_800
    rings = ch08.polygon_outlines(path, grid, 1)
    assert len(rings) == 1
    np.testing.assert_allclose(rings[0][:, 0].min(), 0.0)
    np.testing.assert_allclose(rings[0][:, 1].max(), 1.2)  # top of the scene, in km


def test_metric_rows_match_counts() -> None:
    counts = {"tp": 6, "fp": 2, "fn": 2, "tn": 10}
    rows = count_rows(counts, model="m", region="SC")
    expected = metrics_from_counts(counts)
    assert dict(zip(rows["metric"], rows["value"], strict=True)) == {
        name: expected[name] for name in ev.METRICS}
    assert set(rows["region"]) == {"SC"}


# --------------------------------------------------------------------------- Everest: no files


@pytest.mark.parametrize("split", ev.SPLITS)
def test_split_parts_disjoint_with_gap(split: str) -> None:
    shape = (655, 800)
    parts = ev.split_parts(shape, split, gap=64, val_size=128)
    masks = {}
    for name, (rows, cols) in parts.items():
        mask = np.zeros(shape, bool)
        mask[rows, cols] = True
        masks[name] = mask
    total = sum(mask.astype(int) for mask in masks.values())
    assert total.max() == 1  # no pixel in two parts
    assert masks["val"].sum() > 0 and masks["train"].sum() > 0 and masks["test"].sum() > 0
    # at least one patch between any training/validation pixel and any held-out pixel
    from scipy import ndimage

    distance = ndimage.distance_transform_cdt(~masks["test"], metric="chessboard")
    assert distance[masks["train"] | masks["val"]].min() > 64
    assert masks["test"].sum() == (masks["train"] | masks["val"]).sum()


def test_split_parts_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="split"):
        ev.split_parts((100, 100), "up-down", 10, 10)
    with pytest.raises(ValueError, match="too small"):
        ev.split_parts((100, 100), "west-east", 100, 10)
    with pytest.raises(ValueError, match="at least one patch"):
        ev.EverestSettings(preset="tiny", gap=32)


def test_everest_settings_follow_profile() -> None:
    smoke, quick = load_profile("smoke"), load_profile("quick")
    assert ev.everest_settings(smoke).preset == "tiny"
    assert ev.everest_settings(quick).preset == "small"
    assert ev.everest_settings(quick).epochs == quick.experiments.scene_epochs
    assert ev.everest_settings(quick, seed=7).seed == 7
    assert ev.everest_settings(smoke).run_eagerly == smoke.training.run_eagerly
    assert ev.everest_settings(quick).batchnorm_momentum == quick.training.batchnorm_momentum
    custom = dataclasses.replace(quick, experiments=dataclasses.replace(
        quick.experiments, everest_architecture="deeplab", everest_steps_per_epoch=7,
        everest_learning_rate=1e-3))
    settings = ev.everest_settings(custom)
    assert (settings.architecture, settings.steps_per_epoch, settings.learning_rate) == (
        "deeplab", 7, 1e-3)
    plain = dataclasses.replace(quick, experiments=dataclasses.replace(
        quick.experiments, everest_architecture="glavitu", everest_steps_per_epoch=None,
        everest_learning_rate=None))
    assert ev.everest_settings(plain).steps_per_epoch == quick.training.steps_per_epoch
    assert ev.everest_settings(plain).learning_rate == quick.training.learning_rate
    with pytest.raises(ValueError, match="everest_architecture"):
        ev.everest_settings(dataclasses.replace(quick, experiments=dataclasses.replace(
            quick.experiments, everest_architecture="unet")))
    with pytest.raises(ValueError, match="batchnorm_momentum"):
        ev.EverestSettings(preset="tiny", batchnorm_momentum=1.0)


def test_threshold_baseline() -> None:
    rgb = np.array([[[255, 255, 255], [200, 200, 200], [250, 250, 110]]], np.uint8)
    assert ev.threshold_baseline(rgb).tolist() == [[True, False, True]]


def _fake_everest(rgb: np.ndarray, nir: np.ndarray) -> ev.EverestData:
    """An in-memory scene with the given DN (glacier where the mean RGB exceeds 200)."""
    optical = np.zeros(rgb.shape[:2] + (6,), np.float32)
    optical[..., :3] = rgb[..., ::-1] / 255.0
    optical[..., 3] = nir / 255.0
    return ev.EverestData(optical, rgb.astype(np.uint8), rgb.mean(axis=-1) > 200,
                          TRANSFORM, CRS)


def test_everest_norm_stats_standardise_the_training_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    rgb[:, 15:] = 255  # the other half is saturated: it must not enter the statistics
    data = _fake_everest(rgb, rng.integers(0, 256, (40, 30)))
    window = (slice(0, 40), slice(0, 15))
    stats = ev.everest_norm_stats(data, window)
    features = ev.model_features(data, stats, window)
    assert features.shape == (40, 15, 6)
    np.testing.assert_allclose(features[..., :4].mean(axis=(0, 1)), 0.0, atol=1e-3)
    np.testing.assert_allclose(features[..., :4].std(axis=(0, 1)), 1.0, atol=1e-3)
    assert not features[..., 4:].any()  # SWIR stays zero
    blue = rgb[:, :15, 2].astype(float)
    assert stats.minimum["optical"][0] == pytest.approx(blue.mean(), abs=1e-3)
    # the statistics as the model keeps them (JSON) give the same features
    stats.to_json(tmp_path / "norm_stats.json")
    kept = NormStats.from_json(tmp_path / "norm_stats.json")
    np.testing.assert_array_equal(ev.model_features(data, kept, window), features)
    # and deployment (deploy, map_glaciers) normalises the files' DN the same way, unclipped
    deployed, _ = normalise_features({"optical": ev.optical_dn(data)[window]}, kept)
    np.testing.assert_array_equal(deployed["optical"], features)
    with pytest.raises(ValueError, match="constant"):
        ev.everest_norm_stats(data, (slice(0, 40), slice(15, 30)))


def test_illumination_classes() -> None:
    rgb = np.array([[[255, 250, 240], [60, 80, 120], [120, 90, 60], [90, 90, 90]]], np.uint8)
    assert ev.illumination_classes(rgb).tolist() == [[0, 1, 2, 2]]


# --------------------------------------------------------------------------- Everest: real files


def test_load_everest_band_mapping(everest: ev.EverestData) -> None:
    assert everest.optical.shape == (655, 800, 6)
    assert everest.optical.dtype == np.float32
    assert everest.optical.min() >= 0.0 and everest.optical.max() <= 1.0
    assert not everest.optical[..., 4:].any()  # SWIR zero-filled
    # blue, green, red of the model are bands 3, 2, 1 of the RGB file
    np.testing.assert_allclose(everest.optical[..., 2] * 255, everest.rgb_dn[..., 0])
    np.testing.assert_allclose(everest.optical[..., 0] * 255, everest.rgb_dn[..., 2])
    assert everest.glacier.mean() == pytest.approx(0.5397, abs=1e-4)  # README: 53.97 %


def test_threshold_baseline_matches_readme(everest: ev.EverestData) -> None:
    from glacier_mapping.evaluation import confusion_counts

    counts = confusion_counts(ev.threshold_baseline(everest.rgb_dn).astype(int),
                              everest.glacier.astype(int))
    assert metrics_from_counts(counts)["iou"] == pytest.approx(0.54, abs=0.01)


def test_everest_tiles_feed_the_patch_pipeline(everest: ev.EverestData) -> None:
    from glacier_mapping.data.patches import make_patch_dataset

    parts = ev.split_parts(everest.shape, "west-east", 64, 128)
    stats = ev.everest_norm_stats(everest, parts["train"])
    tile = ev.everest_tile(everest, stats, parts["val"], "EVEREST-1-0", 64)
    assert tile.original_shape == (128, 368)
    np.testing.assert_array_equal(tile.features["optical"][tile.valid],
                                  ev.model_features(everest, stats, parts["val"]).reshape(-1, 6))
    west, east, south, north = tile.bounds
    assert 86.7 < west < east < 87.1 and 27.9 < south < north < 28.11
    inputs, targets = next(iter(make_patch_dataset([tile], ["optical"], 64, 2, mode="sequential",
                                                   augment=False)))
    assert inputs["optical"].shape == (2, 64, 64, 6)
    assert targets["output"].shape == (2, 64, 64, 2)


def test_evaluate_everest_and_verdict(everest: ev.EverestData) -> None:
    settings = ev.EverestSettings(preset="tiny")
    window = ev.split_parts(everest.shape, settings.split, settings.gap, settings.val_size)["test"]
    perfect = everest.glacier[window].astype(np.float32)
    result = ev.evaluate_everest(everest, settings, perfect)
    table = result.table()
    assert table.loc["glavitu", "iou"] == 1.0
    assert 0.0 < table.loc["threshold", "iou"] < 1.0
    assert "difference of +" in ev.everest_comparison(result)
    tidy = result.tidy(region=ev.EVEREST_REGION)
    assert set(tidy["model"]) == {"glavitu", "threshold"}
    assert set(tidy["metric"]) == set(ev.METRICS)
    empty = ev.evaluate_everest(everest, settings, np.zeros_like(perfect))
    assert "difference of -" in ev.everest_comparison(empty)
    assert empty.gain() == pytest.approx(-table.loc["threshold", "iou"])
    with pytest.raises(ValueError, match="cover the test part"):
        ev.evaluate_everest(everest, settings, perfect[:10])
    with pytest.raises(ValueError, match="part"):
        ev.evaluate_everest(everest, settings, perfect, part="train")


def test_validation_part_and_errors_by_illumination(everest: ev.EverestData) -> None:
    settings = ev.EverestSettings(preset="tiny", architecture="deeplab")
    window = ev.split_parts(everest.shape, settings.split, settings.gap, settings.val_size)["val"]
    result = ev.evaluate_everest(everest, settings, everest.glacier[window], part="val")
    assert result.model_name == "deeplab" and result.glacier.shape == (128, 368)
    verdict = ev.everest_comparison(result)
    assert "validation strip" in verdict and "target" not in verdict
    table = ev.errors_by_illumination(everest, result)
    assert list(table.index) == list(ev.ILLUMINATION_CLASSES)
    np.testing.assert_allclose(table["share of glacier"].sum(), 1.0)
    np.testing.assert_allclose(table["share of non-glacier"].sum(), 1.0)
    assert (table["model recall"] == 1.0).all()
    assert (table["model false-positive rate"] == 0.0).all()
    # the threshold's glacier is exactly the "bright" class
    classes = ev.illumination_classes(everest.rgb_dn[window])
    np.testing.assert_array_equal(classes == 0, result.threshold)


def test_everest_model_depends_on_its_seed_not_on_earlier_random_draws(tmp_path: Path) -> None:
    import keras

    from glacier_mapping.workflow import open_context

    try:
        scene = everest_scene(None)
    except RealSceneNotAvailable as error:
        pytest.skip(f"Everest scene not available (shared/real_scenes absent): {error}")
    weights = []
    for run, draws in enumerate((0, 3)):
        for _ in range(draws):  # what a notebook may have done before with Keras' global seed
            keras.layers.Dense(2).build((None, 2))
        ctx = open_context("smoke", "", tmp_path / str(run), 42)
        settings = dataclasses.replace(ev.everest_settings(ctx.profile), epochs=1,
                                       steps_per_epoch=2)
        trained = ev.train_everest(ctx, scene, settings, verbose=False)
        weights.append(keras.saving.load_model(trained.model_path, compile=False).get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    # the trained model predicts its held-out part with the statistics it was trained with
    assert trained.card.norm_stats == "norm_stats.json" and trained.card.strategy == "single scene"
    data = ev.load_everest(scene)
    probs = np.load(ev.predict_everest(ctx, trained, scene, "test").file("probs.npy"))
    result = ev.evaluate_everest(data, trained.spec, probs)
    assert probs.shape == result.glacier.shape and set(result.counts) == {"deeplab", "threshold"}
