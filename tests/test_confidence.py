"""Calibration, bias optimisation and IoU estimation over cached predictions (chapters 05-07)."""

import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

from glacier_mapping import adaptation, calibration, iou_estimation, plots, predictions
from glacier_mapping.calibration import (
    IsotonicCalibrator,
    KernelRidgeCalibrator,
    TemperatureCalibrator,
    load_calibrator,
)
from glacier_mapping.chapters import bias_optimisation as ch06
from glacier_mapping.chapters import confidence_calibration as ch05
from glacier_mapping.chapters import iou_estimation as ch07
from glacier_mapping.config import load_profile
from glacier_mapping.data import splits
from glacier_mapping.data.benchmark import BenchmarkFiles
from glacier_mapping.data.schema import LOCATION_SLOTS
from glacier_mapping.data.tiles import make_tile, write_tiles
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.store import ArtifactStore
from glacier_mapping.trained_models import ModelCard, TrainedModel
from glacier_mapping.workflow import Context

SIZE, PATCH = 16, 8


def _tile(name, region, seed, acquisition=None, width=SIZE):
    rng = np.random.default_rng(seed)
    labels = np.zeros((SIZE, width), dtype=np.uint8)
    labels[: SIZE // 2] = 1
    features = {"optical": rng.random((SIZE, width, 6), dtype=np.float32),
                "dem": rng.random((SIZE, width, 2), dtype=np.float32)}
    extra = {"acquisition": acquisition, "date": "2020-08-31"} if acquisition else {}
    return make_tile(name, region, features, labels, (0.0, 1.0, 0.0, 1.0), PATCH, extra)


@pytest.fixture
def ctx(tmp_path):
    root = tmp_path / "bench"
    root.mkdir()
    files = {
        "train": [_tile("ALP-0-0", "ALP", 1), _tile("HMA1-0-0", "HMA", 2)],
        "val": [_tile("ALP-0-1", "ALP", 3), _tile("HMA1-0-1", "HMA", 4)],
        "test": [_tile("ALP-1-0", "ALP", 5), _tile("HMA1-1-0", "HMA", 6)],
        "independent": [_tile("SC2-0-0", "SC", 7, "spatial"),
                        _tile("SC2-0-1", "SC", 8, "spatial", width=12),
                        _tile("ALP_2023-0-0", "ALP", 9, "temporal")],
    }
    for split, tiles in files.items():
        write_tiles(root / f"{split}.hdf5", tiles)
    bench = BenchmarkFiles(root, root / "train.hdf5", root / "val.hdf5", root / "test.hdf5",
                           None, root / "independent.hdf5", [])
    out = tmp_path / "out"
    return Context(load_profile("smoke"), out, ArtifactStore(out / "cache"), bench, "k", True)


def _predictions(ctx, split, quality=0.8, seed=0):
    """A predictions artifact: glacier probability `quality` on glacier rows, else 1 - quality,
    with noise; rows of tiles.csv as predict_split writes them."""
    from glacier_mapping.data.tiles import iter_tiles

    rng = np.random.default_rng(seed)

    def build(directory):
        probs, rows = {}, []
        for tile in iter_tiles(ctx.benchmark.split_path(split), sensors=[]):
            glacier = np.where(tile.labels[..., 1] > 0.5, quality, 1 - quality)
            noisy = np.clip(glacier + rng.normal(0, 0.15, glacier.shape), 0.01, 0.99)
            probs[tile.name] = noisy.astype(np.float16)
            rows.append({"tile": tile.name, "region": tile.region, "subregion": tile.subregion,
                         "acquisition": str(tile.attrs.get("acquisition", "")),
                         "date": str(tile.attrs.get("date", ""))})
        np.savez_compressed(directory / "probs.npz", **probs)
        pd.DataFrame(rows).to_csv(directory / "tiles.csv", index=False)

    return ctx.store.get_or_create("predictions", {"split": split, "q": quality, "s": seed},
                                   build)


def _toy_model():
    """Glacier logit = 8 * (optical[..., 0] - 0.5) * (1 + location[SC]): location matters."""
    optical = keras.Input((PATCH, PATCH, 6), name="optical")
    dem = keras.Input((PATCH, PATCH, 2), name="dem")
    location = keras.Input((12,), name="location")
    selector = layers.Dense(1, use_bias=False, name="selector")
    gain = 1.0 + selector(location)[:, None, None, :]
    logit = 8.0 * (optical[..., :1] - 0.5) * gain + 0.0 * dem[..., :1]
    output = layers.Softmax(name="output")(layers.Concatenate()([-logit, logit]))
    model = keras.Model({"optical": optical, "dem": dem, "location": location},
                        {"output": output})
    kernel = np.zeros((12, 1), dtype="float32")
    kernel[LOCATION_SLOTS.index("SC")] = 1.0
    selector.set_weights([kernel])
    return model


@pytest.fixture
def trained(ctx):
    spec = ExperimentSpec(name="toy-re", strategy="region_encoding", preset="tiny",
                          patch_size=PATCH, batch_size=2)
    artifact = ctx.store.get_or_create("model", {"toy": 1}, lambda d: None)
    return TrainedModel(spec, artifact, _card(spec))


def test_two_class_and_labelled_mask(ctx):
    probs = predictions.two_class(np.array([[0.2, 0.9]], dtype=np.float16))
    np.testing.assert_allclose(probs, [[[0.8, 0.2], [0.1, 0.9]]], atol=1e-3)
    assert probs.dtype == np.float32
    tile = _tile("ALP-0-0", "ALP", 0, width=12)  # padded to 16 columns
    mask = predictions.labelled_mask(tile)
    assert mask.sum() == SIZE * 12 and not mask[:, :2].any()


def test_fit_choose_save_and_load_calibrators(ctx):
    val, test = _predictions(ctx, "val"), _predictions(ctx, "test", seed=1)
    calibrators = calibration.fit_calibrators(ctx, val, max_pixels=500)
    assert list(calibrators) == list(calibration.CALIBRATOR_KINDS)
    assert isinstance(calibrators["kernel_ridge"], KernelRidgeCalibrator)
    assert isinstance(calibrators["isotonic"], IsotonicCalibrator)
    assert isinstance(calibrators["temperature"], TemperatureCalibrator)
    again = calibration.fit_calibrators(ctx, val, max_pixels=500)  # cached artifact, same JSON
    assert again["temperature"].temperature == calibrators["temperature"].temperature
    events = [e for e in ctx.store.events() if e["kind"] == "calibrators"]
    assert [e["reused"] for e in events] == [False, True]

    candidates = {calibration.UNCALIBRATED: None, **calibrators}
    tables = calibration.reliability_tables(ctx, test, candidates)
    assert set(tables) == {(name, region) for name in candidates for region in
                           ("ALP", "HMA", "ALL")}
    assert tables[("isotonic", "ALL")].total == 2 * SIZE * SIZE
    ece = calibration.ece_table(tables, "test")
    assert len(ece) == 12 and ece["ece"].between(0, 1).all()
    chosen = calibration.choose_calibrator(ece)
    pooled = ece[(ece.region == "ALL") & (ece.calibrator != calibration.UNCALIBRATED)]
    assert chosen == pooled.sort_values("ece").calibrator.iloc[0]
    # raw entropy confidence of p = 0.8 is ~0.28 but right ~90 %: calibration must help
    rows = pooled.set_index("calibrator")["ece"]
    raw = ece[(ece.region == "ALL") & (ece.calibrator == calibration.UNCALIBRATED)].ece.iloc[0]
    assert rows[chosen] < raw

    path = calibration.save_chosen_calibrator(ctx, "toy", calibrators, chosen, ece)
    assert path == ctx.output_dir / "calibration" / "toy.json"
    assert load_calibrator(path).kind == chosen  # what deploy --calibrator reads
    for kind in calibration.CALIBRATOR_KINDS:
        assert load_calibrator(path.parent / "toy" / f"{kind}.json").kind == kind
    loaded, selection = calibration.load_chosen_calibrator(ctx, "toy")
    probs = predictions.two_class(np.linspace(0, 1, 11))
    np.testing.assert_allclose(loaded.calibrated_confidence(probs),
                               calibrators[chosen].calibrated_confidence(probs))
    assert f"{chosen}/test" in selection["ece"]
    summary = ch05.calibration_summary(ece, chosen)
    assert summary.shape == (3, 1)

    frame = ch05.diagram_frame(tables, list(candidates))
    assert set(frame.calibrator) == set(candidates) and len(frame) == 4 * 10
    png = plots.save_reliability_png(frame, ctx.output_dir / "figures" / "r.png", "t")
    assert png.stat().st_size > 1000
    tidy = ch05.ece_rows(ece, _spec_holder())
    assert set(tidy.metric) == {"ece"} and len(tidy) == 12 and set(tidy.split) == {"test"}


def _card(spec):
    return ModelCard(name=spec.name, architecture=spec.architecture, preset=spec.preset,
                     strategy=spec.strategy, sensors=spec.sensors)


def _spec_holder():
    spec = ExperimentSpec(name="g")
    return TrainedModel(spec, None, _card(spec))


def test_choose_calibrator_ties_and_errors():
    ece = pd.DataFrame({"calibrator": ["kernel_ridge", "isotonic", "temperature", "isotonic"],
                        "split": ["test", "test", "test", "val"],
                        "region": ["ALL"] * 4, "ece": [0.05, 0.05, 0.2, 0.0]})
    assert calibration.choose_calibrator(ece) == "kernel_ridge"  # tie -> book order
    assert calibration.choose_calibrator(ece, split="val") == "isotonic"
    with pytest.raises(ValueError, match="No ECE"):
        calibration.choose_calibrator(ece, region="ALP")


def test_load_chosen_calibrator_missing(ctx):
    with pytest.raises(FileNotFoundError, match="run chapter 05"):
        calibration.load_chosen_calibrator(ctx, "nothing")


def test_confidence_band_and_summary():
    conf_map, band = ch05.confidence_band(np.array([[0.5, 0.999], [0.01, 0.9]]), None)
    assert band.tolist() == [[True, False], [True, True]]  # entropy confidence of 0.01 is 0.92
    assert conf_map[0, 0] == pytest.approx(0.0, abs=1e-6)
    predicted = np.array([[1, 1], [0, 1]], bool)
    truth = np.array([[0, 1], [0, 1]], bool)
    summary = ch05.band_summary(band, predicted, truth, np.ones((2, 2), bool))
    assert summary == {"band_share": 0.75, "errors_in_band": 1.0,
                       "accuracy_outside_band": 1.0}
    empty = ch05.band_summary(np.ones((2, 2), bool), truth, truth, np.ones((2, 2), bool))
    assert math.isnan(empty["errors_in_band"]) and math.isnan(empty["accuracy_outside_band"])


def test_estimation_tables(ctx):
    calibrator = KernelRidgeCalibrator().fit(
        calibration.calibration_data(ctx, _predictions(ctx, "val")))
    tiles = iou_estimation.estimate_tiles(ctx, _predictions(ctx, "test"), calibrator, "test")
    assert len(tiles) == 2 and set(tiles.region) == {"ALP", "HMA"}
    row = tiles.iloc[0]
    assert row.tp + row.fp + row.fn + row.tn == SIZE * SIZE == row.e_n
    assert row.e_tp + row.e_fp == row.tp + row.fp  # both are the predicted glacier pixels
    assert row.iou == pytest.approx(row.tp / (row.tp + row.fp + row.fn))
    assert 0 < row.iou_estimated < 1

    pooled = iou_estimation.pool_estimates(tiles, ["split"])
    assert pooled.tiles.iloc[0] == 2 and pooled.tp.iloc[0] == tiles.tp.sum()
    assert pooled.iou_estimated.iloc[0] == pytest.approx(
        tiles.e_tp.sum() / (tiles.e_tp.sum() + tiles.e_fp.sum() + tiles.e_fn.sum()))

    more = tiles.assign(split="spatial", region="SC", scene="SC_2020-08-31")
    levels = iou_estimation.estimation_levels(pd.concat([tiles, more], ignore_index=True))
    assert list(levels) == ["tile", "region (test)", "scene (independent)"]
    assert len(levels["scene (independent)"]) == 1
    quality = iou_estimation.quality_table(levels)
    assert quality.loc["tile", "n"] == 4 and quality.loc["region (test)", "n"] == 2
    rows = ch07.estimation_metric_rows(levels, quality, _spec_holder())
    assert {"iou", "iou_estimated", "iou_estimate_mae", "iou_estimate_pearson_r"} <= set(
        rows.metric)
    assert (rows[rows.metric == "iou"].experiment.str.startswith("tile ")).sum() == 4
    worst = iou_estimation.largest_errors(levels["tile"], ["tile"], 2)
    assert len(worst) == 2 and worst.error.abs().is_monotonic_decreasing
    png = plots.save_scatter_png(levels, ctx.output_dir / "s.png", "t")
    assert png.is_file()


def test_stack_tiles_crops_padding_and_width():
    a, b = _tile("SC2-0-0", "SC", 1), _tile("SC2-0-1", "SC", 2, width=12)
    stacked = splits.stack_tiles([a, b])
    assert stacked["optical"].shape == (2 * SIZE, 12, 6)
    top, left = b.padding
    np.testing.assert_array_equal(stacked["dem"][SIZE:], b.features["dem"][top:top + SIZE,
                                                                           left:left + 12])
    with pytest.raises(ValueError, match="at least one"):
        splits.stack_tiles([])


def test_vectors_and_frames():
    vectors = ch06.region_vectors("SC", np.full(12, 1 / 12))
    assert list(vectors) == list(ch06.VECTOR_EXPERIMENTS)
    assert vectors["unknown_slot"][-1] == 1 and vectors["true_slot"][LOCATION_SLOTS.index("SC")]
    frame = adaptation.vector_frame({"SC": vectors["true_slot"]})
    assert list(frame.slot) == list(LOCATION_SLOTS)
    assert frame.change.sum() == pytest.approx(0.0)


def test_bias_optimisation_and_vector_predictions(ctx, trained, monkeypatch):
    model = _toy_model()
    assert ch06.unseen_regions(ctx, trained) == ["SC"]
    result = adaptation.optimise_region(ctx, trained, "SC", max_epochs=2, load_model=lambda: model)
    assert result["epochs_run"] == 2 and result["vector"].sum() == pytest.approx(1.0)
    published = ctx.output_dir / "region_vectors" / "SC.json"
    assert result["path"] == published
    assert json.loads(published.read_text())["metadata"]["region"] == "SC"
    # The parallel form finds the stored vector: it hands no region to the workers.
    handed = []
    monkeypatch.setattr("glacier_mapping.adaptation.run_groups",
                        lambda context, task, groups: handed.extend(groups))
    again = adaptation.optimise_regions(ctx, trained, ["SC"], max_epochs=2,
                                        load_model=lambda: model)
    assert handed == [] and np.array_equal(again["SC"]["vector"], result["vector"])

    table = adaptation.compare_region_vectors(ctx, trained, "SC",
                                        ch06.region_vectors("SC", result["vector"]),
                                        load_model=lambda: model)
    assert list(table.experiment) == list(ch06.VECTOR_EXPERIMENTS)
    assert (table[["tp", "fp", "fn", "tn"]].sum(axis=1) == SIZE * (SIZE + 12)).all()
    # the SC slot doubles the logit: confidence changes, so the predictions differ
    unknown = predictions.predict_with_vector(ctx, trained, adaptation.slot_vector("UNKNOWN"),
                                              regions=["SC"], load_model=lambda: model)
    true = predictions.predict_with_vector(ctx, trained, adaptation.slot_vector("SC"),
                                           regions=["SC"], load_model=lambda: model)
    assert unknown.reused and true.reused  # computed by compare_region_vectors
    with np.load(unknown.file("probs.npz")) as p, np.load(true.file("probs.npz")) as q:
        assert not np.allclose(p["SC2-0-0"], q["SC2-0-0"])
    with pytest.raises(ValueError, match="12 entries"):
        predictions.predict_with_vector(ctx, trained, np.ones(3))


def test_band_rgb():
    rgb = plots.band_rgb(np.array([[1.0, 0.5, 0.2]]), np.array([[False, True, True]]),
                        np.array([[True, True, False]]))
    assert rgb.shape == (1, 3, 3)
    np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])
    np.testing.assert_allclose(rgb[0, 1], [0.25, 0.7, 0.75])
    np.testing.assert_allclose(rgb[0, 2], [1, 1, 1])  # invalid: white


def test_describe_calibrator():
    assert calibration.describe_calibrator(TemperatureCalibrator(2.0)) == "temperature T = 2.000"
    iso = IsotonicCalibrator()
    iso.x_thresholds, iso.y_thresholds = np.array([0.0, 1.0]), np.array([0.5, 1.0])
    assert "2 thresholds" in calibration.describe_calibrator(iso)
