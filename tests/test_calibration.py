"""Tests of glacier_mapping.calibration: confidence, reliability, ECE, calibrators, JSON."""

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.kernel_ridge import KernelRidge

from glacier_mapping.calibration import (
    CalibrationData,
    IsotonicCalibrator,
    KernelRidgeCalibrator,
    ReliabilityTable,
    TemperatureCalibrator,
    confidence,
    correct_predictions,
    expected_calibration_error,
    load_calibrator,
    reliability_diagram_data,
)


def _probs(p_glacier):
    p = np.asarray(p_glacier, dtype=np.float64)
    return np.stack([1 - p, p], axis=-1)


def _miscalibrated(n, seed):
    """Over-confident probabilities: top-class probability q in [0.5, 1] is right with
    probability 0.5 + 0.5 s**3, s = 2 q - 1 (a calibrated model would have 0.5 + 0.5 s)."""
    rng = np.random.default_rng(seed)
    top = rng.uniform(0.5, 1.0, n)
    glacier_predicted = rng.random(n) < 0.4
    probs = _probs(np.where(glacier_predicted, top, 1 - top))
    accuracy = 0.5 + 0.5 * (2 * top - 1) ** 3
    correct = rng.random(n) < accuracy
    labels = np.where(correct, glacier_predicted, ~glacier_predicted).astype(np.int64)
    return probs, labels


def _data(n, seed):
    probs, labels = _miscalibrated(n, seed)
    return CalibrationData(max_pixels=50_000, seed=seed).update(probs, labels), probs, labels


def _ece_of(calibrator, probs, labels):
    table = ReliabilityTable().update(
        calibrator.calibrated_confidence(probs), correct_predictions(probs, labels)
    )
    return expected_calibration_error(table)


# --- confidence ---------------------------------------------------------------------------


def test_confidence_values_and_shape():
    probs = _probs([[0.5, 1.0], [0.0, 0.9]])
    conf = confidence(probs)
    assert conf.shape == (2, 2)
    assert conf[0, 0] == pytest.approx(0.0, abs=1e-12)
    eps = 1e-6
    h_eps = -(eps * np.log(eps) + (1 - eps) * np.log(1 - eps)) / np.log(2)
    assert conf[0, 1] == pytest.approx(1 - h_eps)
    assert conf[1, 0] == pytest.approx(conf[0, 1])
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    assert conf[1, 1] == pytest.approx(1 - h09)
    assert confidence(_probs([0.2]).astype(np.float32)).dtype == np.float32


def test_confidence_rejects_wrong_class_axis():
    with pytest.raises(ValueError, match="shape"):
        confidence(np.ones((4, 4, 3)) / 3)


def test_correct_predictions_accepts_indices_and_one_hot():
    probs = _probs([0.2, 0.8, 0.7])
    labels = np.array([0, 0, 1])
    expected = np.array([True, False, True])
    np.testing.assert_array_equal(correct_predictions(probs, labels), expected)
    np.testing.assert_array_equal(correct_predictions(probs, np.eye(2)[labels]), expected)
    with pytest.raises(ValueError, match="labels"):
        correct_predictions(probs, np.zeros(4))


# --- reliability table and ECE ------------------------------------------------------------


def test_ece_zero_for_exactly_calibrated_pixels():
    conf, correct = [], []
    for c, n_correct in [(0.2, 2), (0.5, 5), (0.7, 7), (0.9, 9), (0.0, 0)]:
        conf += [c] * 10
        correct += [True] * n_correct + [False] * (10 - n_correct)
    table = ReliabilityTable().update(np.array(conf), np.array(correct))
    assert table.total == 50
    assert expected_calibration_error(table) == pytest.approx(0.0, abs=1e-12)


def test_ece_matches_hand_computation_and_valid_mask():
    conf = np.array([0.15, 0.15, 0.85, 0.95, 0.5])
    correct = np.array([1, 0, 1, 1, 0])
    valid = np.array([1, 1, 1, 1, 0], dtype=bool)
    table = ReliabilityTable(10).update(conf, correct, valid)
    # bins: 0.15 (n=2, acc 0.5), 0.85 (n=1, acc 1), 0.95 (n=1, acc 1); the 0.5 pixel is masked
    expected = 2 / 4 * 0.35 + 1 / 4 * 0.15 + 1 / 4 * 0.05
    assert expected_calibration_error(table, n_bins=10) == pytest.approx(expected)
    frame = table.table()
    assert list(frame.columns) == ["bin_lower", "bin_upper", "count", "mean_confidence",
                                   "accuracy"]
    assert frame["count"].sum() == 4
    assert np.isnan(frame.loc[5, "accuracy"])


def test_incremental_merge_and_rebin_equal_one_shot():
    rng = np.random.default_rng(0)
    conf = rng.random(5000)
    correct = rng.random(5000) < conf
    whole = ReliabilityTable().update(conf, correct)
    first = ReliabilityTable().update(conf[:2000], correct[:2000])
    second = ReliabilityTable().update(conf[2000:], correct[2000:])
    merged = first.merge(second)
    np.testing.assert_array_equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.confidence_sum, whole.confidence_sum)
    direct10 = ReliabilityTable(10).update(conf, correct)
    np.testing.assert_array_equal(whole.rebin(10).counts, direct10.counts)
    np.testing.assert_allclose(whole.rebin(10).correct_sum, direct10.correct_sum)
    assert expected_calibration_error(whole, n_bins=10) == pytest.approx(
        expected_calibration_error(direct10, n_bins=10))
    restored = ReliabilityTable.from_json(json.loads(json.dumps(whole.to_json())))
    np.testing.assert_array_equal(restored.confidence_sum, whole.confidence_sum)


def test_table_errors():
    with pytest.raises(ValueError, match="rebin"):
        ReliabilityTable(100).rebin(7)
    with pytest.raises(ValueError, match="merge"):
        ReliabilityTable(100).merge(ReliabilityTable(10))
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(ReliabilityTable())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ReliabilityTable().update(np.array([1.5]), np.array([True]))
    with pytest.raises(ValueError, match="same shape"):
        ReliabilityTable().update(np.zeros(3), np.zeros(4))


def test_reliability_diagram_data():
    conf = np.array([0.05, 0.15, 0.16, 0.99])
    table = ReliabilityTable().update(conf, np.array([0, 1, 0, 1]))
    frame = reliability_diagram_data(table)
    assert len(frame) == 10
    assert frame["fraction"].sum() == pytest.approx(1.0)
    assert frame.loc[1, "accuracy"] == pytest.approx(0.5)
    assert frame.loc[1, "gap"] == pytest.approx(0.5 - 0.155)
    assert frame.loc[9, "bin_center"] == pytest.approx(0.95)


def test_calibration_data_sample_is_bounded_and_uniform():
    data = CalibrationData(max_pixels=1000, seed=3)
    for value in range(4):
        probs = _probs(np.full(5000, 0.6 + 0.1 * value))
        data.update(probs, np.ones(5000, dtype=int), valid=np.arange(5000) < 4000)
    probs, labels = data.sample()
    assert probs.shape == (1000, 2) and labels.shape == (1000,)
    assert data.table.total == 16_000
    shares = np.unique(np.round(probs[:, 1], 1), return_counts=True)[1] / 1000
    np.testing.assert_allclose(shares, 0.25, atol=0.06)


# --- calibrators --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fit_and_test():
    data, _, _ = _data(100_000, seed=1)
    _, test_probs, test_labels = _data(100_000, seed=2)
    return data, test_probs, test_labels


@pytest.mark.parametrize("cls,factor", [(KernelRidgeCalibrator, 0.3),
                                        (IsotonicCalibrator, 0.3),
                                        (TemperatureCalibrator, 0.5)])
def test_each_calibrator_lowers_held_out_ece(fit_and_test, cls, factor):
    data, test_probs, test_labels = fit_and_test
    before = expected_calibration_error(ReliabilityTable().update_from_probs(test_probs,
                                                                           test_labels))
    after = _ece_of(cls().fit(data), test_probs, test_labels)
    assert before > 0.1
    assert after < factor * before


@pytest.mark.parametrize("cls", [KernelRidgeCalibrator, IsotonicCalibrator,
                                 TemperatureCalibrator])
def test_json_round_trip_gives_identical_predictions(fit_and_test, tmp_path, cls):
    data, test_probs, _ = fit_and_test
    calibrator = cls().fit(data)
    path = calibrator.save(tmp_path / "sub" / f"{cls.kind}.json")
    assert [p.name for p in path.parent.iterdir()] == [f"{cls.kind}.json"]
    loaded = load_calibrator(path)
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.calibrated_confidence(test_probs),
                                  calibrator.calibrated_confidence(test_probs))


def test_kernel_ridge_matches_sklearn_when_unregularised():
    # Equal counts -> w = 1 everywhere -> alpha = 0: the same as KernelRidge(alpha ~ 0).
    conf = np.repeat([0.1, 0.33, 0.6, 0.8], 50)
    correct = np.concatenate([np.arange(50) < k for k in (10, 20, 35, 45)])
    table = ReliabilityTable().update(conf, correct)
    ours = KernelRidgeCalibrator().fit(table)
    x = np.array([0.0, 0.1, 0.33, 0.6, 0.8, 1.0])[:, None]
    y = np.array([0.0, 0.2, 0.4, 0.7, 0.9, 1.0])
    reference = KernelRidge(alpha=1e-10, kernel="laplacian").fit(x, y)
    grid = np.linspace(0, 1, 101)
    np.testing.assert_allclose(ours.predict(grid), np.clip(reference.predict(grid[:, None]), 0, 1),
                               atol=1e-7)
    np.testing.assert_allclose(ours.predict(x[:, 0]), y, atol=1e-7)


def test_kernel_ridge_regularises_sparse_bins_and_survives_duplicate_anchor():
    conf = np.concatenate([np.full(1000, 0.55), np.full(5, 0.75), np.zeros(3)])
    correct = np.concatenate([np.arange(1000) < 600, np.ones(5, bool), np.ones(3, bool)])
    calibrator = KernelRidgeCalibrator().fit(ReliabilityTable().update(conf, correct))
    pred = calibrator.predict(np.array([0.0, 0.55, 0.75, 1.0]))
    assert np.all(np.isfinite(calibrator.dual_coef))
    assert pred[1] == pytest.approx(0.6, abs=1e-6)  # max-count bin: alpha = 0, interpolated
    assert pred[3] == pytest.approx(1.0, abs=1e-6)  # anchor
    assert 0.0 <= pred[0] <= 1.0 and 0.0 <= pred[2] <= 1.0
    big = calibrator.predict(np.random.default_rng(0).random((3, 20_000)))
    assert big.shape == (3, 20_000) and big.min() >= 0 and big.max() <= 1


def test_isotonic_matches_sklearn_and_is_monotone(fit_and_test):
    data, _, _ = fit_and_test
    ours = IsotonicCalibrator().fit(data.table)
    frame = data.table.table().dropna()
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        frame["mean_confidence"], frame["accuracy"], sample_weight=frame["count"])
    grid = np.linspace(0, 1, 501)
    np.testing.assert_allclose(ours.predict(grid), reference.predict(grid), atol=1e-12)
    assert np.all(np.diff(ours.predict(grid)) >= 0)


def test_temperature_recovers_known_temperature():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 4, 40_000)
    labels = (rng.random(40_000) < 1 / (1 + np.exp(-logits / 2.0))).astype(int)
    probs = _probs(1 / (1 + np.exp(-logits)))
    calibrator = TemperatureCalibrator().fit(CalibrationData(max_pixels=40_000).update(probs,
                                                                                       labels))
    assert calibrator.temperature == pytest.approx(2.0, rel=0.05)
    scaled = calibrator.calibrate_probs(probs)
    np.testing.assert_allclose(scaled.sum(-1), 1.0)
    np.testing.assert_array_equal(scaled.argmax(-1), probs.argmax(-1))


def test_calibrator_errors(tmp_path):
    with pytest.raises(ValueError, match="CalibrationData"):
        TemperatureCalibrator().fit(ReliabilityTable().update([0.5], [True]))
    with pytest.raises(ValueError, match="not fitted"):
        KernelRidgeCalibrator().predict(np.array([0.5]))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_calibrator(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "platt"}))
    with pytest.raises(ValueError, match="bad.json.*platt"):
        load_calibrator(bad)
    bad.write_text(json.dumps({"kind": "isotonic"}))
    with pytest.raises(ValueError, match="x_thresholds"):
        load_calibrator(bad)


KERNEL_RIDGE = {"kind": "kernel_ridge", "gamma": 1.0, "alpha_scale": 0.01, "weight_power": 0.1,
                "support": [0.0, 0.5, 1.0], "dual_coef": [0.1, 0.2, 0.3]}
ISOTONIC = {"kind": "isotonic", "x_thresholds": [0.1, 0.5, 0.9], "y_thresholds": [0.2, 0.6, 0.9]}
TEMPERATURE = {"kind": "temperature", "temperature": 1.5, "bounds": [0.05, 20.0]}


@pytest.mark.parametrize(("base", "changes", "pattern"), [
    (TEMPERATURE, {"temperature": "abc"}, r"field 'temperature' must be a finite number > 0; "
                                          r"got 'abc'"),
    (TEMPERATURE, {"temperature": float("nan")}, r"field 'temperature' .*got nan"),
    (TEMPERATURE, {"temperature": 0}, r"field 'temperature' .*got 0"),
    (TEMPERATURE, {"temperature": True}, r"field 'temperature' .*got True"),
    (TEMPERATURE, {"bounds": [20.0, 0.05]}, r"field 'bounds' must be two numbers 0 < low < high"),
    (TEMPERATURE, {"bounds": [0.05]}, r"field 'bounds' must be two numbers"),
    (TEMPERATURE, {"bounds": "wide"}, r"field 'bounds' must be a non-empty list of numbers"),
    (TEMPERATURE, {"format_version": 2}, r"field 'format_version' is 2"),
    (KERNEL_RIDGE, {"gamma": -1.0}, r"field 'gamma' must be a finite number > 0"),
    (KERNEL_RIDGE, {"alpha_scale": float("inf")}, r"field 'alpha_scale' must be a finite number "
                                                  r">= 0; got inf"),
    (KERNEL_RIDGE, {"weight_power": None}, r"field 'weight_power' .*got None"),
    (KERNEL_RIDGE, {"support": [0.0, 1.5, 1.0]}, r"field 'support' item 1 must be a finite "
                                                 r"number in \[0, 1\]; got 1.5"),
    (KERNEL_RIDGE, {"dual_coef": [0.1, "x", 0.3]}, r"field 'dual_coef' item 1 .*got 'x'"),
    (KERNEL_RIDGE, {"dual_coef": [0.1, 0.2]}, r"fields 'support' \(3 values\) and 'dual_coef' "
                                              r"\(2 values\) must have the same length"),
    (KERNEL_RIDGE, {"support": []}, r"field 'support' must be a non-empty list"),
    (ISOTONIC, {"x_thresholds": [0.1, 0.9, 0.5]}, r"field 'x_thresholds' must be sorted.*item 2"),
    (ISOTONIC, {"y_thresholds": [0.2, float("nan"), 0.9]}, r"field 'y_thresholds' item 1"),
    (ISOTONIC, {"y_thresholds": [0.2, 0.6]}, r"fields .* must have the same length"),
])
def test_calibrator_json_fields_are_checked(tmp_path, base, changes, pattern):
    path = tmp_path / "calibrator.json"
    path.write_text(json.dumps({**base, **changes}))
    with pytest.raises(ValueError, match=rf"calibrator.json: invalid {base['kind']} calibrator: "
                                         rf"{pattern}"):
        load_calibrator(path)


def test_valid_calibrator_json_loads_and_other_errors_name_the_file(tmp_path):
    for data in (TEMPERATURE, KERNEL_RIDGE, ISOTONIC):
        path = tmp_path / f"{data['kind']}.json"
        path.write_text(json.dumps(data))
        assert load_calibrator(path).kind == data["kind"]
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        load_calibrator(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"broken.json: a calibrator JSON holds an object"):
        load_calibrator(path)
