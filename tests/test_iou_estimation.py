"""Tests of glacier_mapping.iou_estimation: expected counts, pooled estimate, quality stats."""

import math

import numpy as np
import pytest

from glacier_mapping.iou_estimation import (
    estimate_iou,
    estimation_quality,
    expected_counts,
    pool_counts,
)


def _simulate(n, glacier_share, rng, truth=lambda c: c):
    """Predictions with confidence c; each is right with probability truth(c)."""
    pred = rng.random(n) < glacier_share
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < truth(conf)
    label = np.where(correct, pred, ~pred)
    tp = np.sum(pred & label)
    true_iou = tp / (tp + np.sum(pred & ~label) + np.sum(~pred & label))
    return pred.astype(np.uint8), conf, true_iou


def _tolerance(pred, conf):
    """Four delta-method standard deviations of the true IoU around the estimate.

    TP and FN are sums of independent Bernoulli(c) / Bernoulli(1 - c) over G and B, so with
    D = |G| + E[FN]: Var(IoU) ~ Var(TP) / D**2 + E[TP]**2 Var(FN) / D**4, Var = sum c (1 - c).
    The std shrinks as 1 / sqrt(N): about 0.58 / sqrt(N) here, so the tolerance is ~2.3 / sqrt(N).
    """
    glacier = pred.astype(bool)
    var = conf * (1 - conf)
    e_tp = conf[glacier].sum()
    d = glacier.sum() + (1 - conf[~glacier]).sum()
    return 4 * math.sqrt(var[glacier].sum() / d**2 + e_tp**2 * var[~glacier].sum() / d**4)


def test_expected_counts_by_hand():
    pred = np.array([[1, 1], [0, 0]])
    conf = np.array([[0.9, 0.6], [0.8, 0.7]])
    counts = expected_counts(pred, conf)
    assert counts == pytest.approx({"tp": 1.5, "fp": 0.5, "fn": 0.5, "tn": 1.5, "n": 4.0})
    assert estimate_iou(counts) == pytest.approx(1.5 / 2.5)
    masked = expected_counts(pred.astype(bool), conf, valid=np.array([[1, 0], [1, 0]]))
    assert masked == pytest.approx({"tp": 0.9, "fp": 0.1, "fn": 0.2, "tn": 0.8, "n": 2.0})


@pytest.mark.parametrize("n", [10_000, 300_000])
def test_estimate_matches_true_iou_when_calibrated(n):
    rng = np.random.default_rng(n)
    pred, conf, true_iou = _simulate(n, 0.3, rng)
    estimate = estimate_iou(expected_counts(pred, conf))
    assert abs(estimate - true_iou) < _tolerance(pred, conf)


def test_miscalibrated_confidence_is_caught_by_the_same_tolerance():
    n = 300_000
    pred, conf, true_iou = _simulate(n, 0.3, np.random.default_rng(1), truth=lambda c: c**3)
    error = estimate_iou(expected_counts(pred, conf)) - true_iou
    assert abs(error) > 10 * _tolerance(pred, conf)


def test_pooling_tiles_equals_one_scene_and_quality_over_tiles():
    rng = np.random.default_rng(7)
    tiles = [_simulate(4000, share, rng) for share in np.linspace(0.1, 0.6, 30)]
    counts = [expected_counts(pred, conf) for pred, conf, _ in tiles]
    scene = expected_counts(np.concatenate([t[0] for t in tiles]),
                            np.concatenate([t[1] for t in tiles]))
    assert pool_counts(counts) == pytest.approx(scene)
    quality = estimation_quality([t[2] for t in tiles], [estimate_iou(c) for c in counts])
    assert quality["n"] == 30
    assert quality["pearson_r"] > 0.9
    assert abs(quality["bias"]) < 0.01 and quality["mae"] < 0.02


def test_estimation_quality_by_hand_and_nan_handling():
    quality = estimation_quality([0.5, 0.7, np.nan, 0.9], [0.6, 0.7, 0.3, 0.8])
    assert quality["n"] == 3
    assert quality["mae"] == pytest.approx(0.2 / 3)
    assert quality["bias"] == pytest.approx(0.0, abs=1e-12)
    assert quality["pearson_r"] == pytest.approx(np.corrcoef([0.5, 0.7, 0.9],
                                                             [0.6, 0.7, 0.8])[0, 1])
    assert math.isnan(estimation_quality([0.5], [0.4])["pearson_r"])


def test_edge_cases_and_errors():
    assert math.isnan(estimate_iou(expected_counts(np.zeros(3), np.ones(3))))
    with pytest.raises(ValueError, match="same shape"):
        expected_counts(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_counts(np.zeros(2), np.array([0.5, 1.2]))
    with pytest.raises(ValueError, match="lacks"):
        pool_counts([{"tp": 1.0}])
    with pytest.raises(ValueError, match="same length"):
        estimation_quality([0.1, 0.2], [0.1])
