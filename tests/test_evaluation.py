"""Tests of glacier_mapping.evaluation on hand-computed masks."""

import math

import numpy as np
import pandas as pd
import pytest

from glacier_mapping.evaluation import (
    confusion_counts,
    evaluate_predictions,
    metrics_from_counts,
    paper_average,
)

PRED = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
LABEL = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
# tp: (0,0), (1,1) -> 2; fp: (0,1) -> 1; fn: (1,0), (2,2) -> 2; tn: 4


def test_confusion_counts_by_hand():
    assert confusion_counts(PRED, LABEL) == {"tp": 2, "fp": 1, "fn": 2, "tn": 4}


def test_one_hot_label_and_padding_are_equivalent_to_integer_label_with_mask():
    one_hot = np.eye(2)[LABEL]
    one_hot[2, :] = 0.0  # padding row: all-zero one-hot
    smoothed = one_hot * 0.9 + 0.05  # label smoothing keeps padding undecided
    valid = np.ones_like(LABEL, dtype=bool)
    valid[2, :] = False
    expected = confusion_counts(PRED, LABEL, valid)
    assert expected == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert confusion_counts(PRED, one_hot) == expected
    assert confusion_counts(PRED, smoothed) == expected


def test_confusion_counts_rejects_bad_input():
    with pytest.raises(ValueError, match="Shapes differ"):
        confusion_counts(PRED, LABEL[:2])
    with pytest.raises(ValueError, match="nodata"):
        confusion_counts(PRED, np.where(LABEL == 1, 255, 0))
    nodata = np.where(LABEL == 1, 1, 255)
    valid = nodata != 255
    assert confusion_counts(PRED, nodata, valid) == {"tp": 2, "fp": 0, "fn": 2, "tn": 0}


def test_metrics_by_hand():
    metrics = metrics_from_counts({"tp": 2, "fp": 1, "fn": 2, "tn": 4})
    assert metrics["iou"] == pytest.approx(2 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 4)
    assert metrics["f1"] == pytest.approx(4 / 7)
    assert metrics["accuracy"] == pytest.approx(6 / 9)


def test_empty_denominators_are_nan():
    metrics = metrics_from_counts({"tp": 0, "fp": 0, "fn": 0, "tn": 9})
    assert all(math.isnan(metrics[name]) for name in ("iou", "precision", "recall", "f1"))
    assert metrics["accuracy"] == 1.0


def _records() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # region A: a big good tile and a small bad one
            {"tile": "a1", "subregion": "A-1", "region": "A", "tp": 90, "fp": 5, "fn": 5, "tn": 0},
            {"tile": "a2", "subregion": "A-2", "region": "A", "tp": 1, "fp": 2, "fn": 1, "tn": 6},
            {"tile": "b1", "subregion": "B-1", "region": "B", "tp": 5, "fp": 5, "fn": 0, "tn": 10},
        ]
    )


def test_pooling_per_level():
    result = evaluate_predictions(_records())
    assert list(result.columns[:3]) == ["level", "name", "region"]
    assert result["level"].value_counts().to_dict() == {
        "tile": 3,
        "subregion": 3,
        "region": 2,
        "overall": 1,
    }
    region_a = result[(result["level"] == "region") & (result["name"] == "A")].iloc[0]
    assert (region_a["tp"], region_a["fp"], region_a["fn"], region_a["tn"]) == (91, 7, 6, 6)
    assert region_a["iou"] == pytest.approx(91 / 104)
    overall = result[result["level"] == "overall"].iloc[0]
    assert overall["name"] == "ALL" and overall["region"] == "ALL"
    assert overall["iou"] == pytest.approx(96 / (96 + 12 + 6))
    tile_a2 = result[(result["level"] == "tile") & (result["name"] == "a2")].iloc[0]
    assert tile_a2["region"] == "A" and tile_a2["iou"] == pytest.approx(1 / 4)
    # Pooling weighs the big tile: region IoU differs from the mean of tile IoUs.
    mean_of_tiles = (90 / 100 + 1 / 4) / 2
    assert region_a["iou"] > mean_of_tiles + 0.2


def test_evaluate_accepts_list_of_dicts_without_subregion():
    records = [
        {k: v for k, v in row.items() if k != "subregion"} for row in _records().to_dict("records")
    ]
    result = evaluate_predictions(records)
    assert "subregion" not in set(result["level"])
    with pytest.raises(ValueError, match="lack columns"):
        evaluate_predictions([{"tile": "x", "tp": 1}])


def test_paper_average_is_unweighted_mean_with_sample_std():
    mean, std = paper_average({"A": 0.9, "B": 0.5, "C": float("nan")})
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(np.std([0.9, 0.5], ddof=1))
    single_mean, single_std = paper_average([0.8])
    assert single_mean == 0.8 and math.isnan(single_std)
