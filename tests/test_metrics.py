"""The tidy metrics: one set of columns, row builders, an atomic writer and a reader."""

import numpy as np
import pandas as pd
import pytest
from test_evaluation import _records

from glacier_mapping.evaluation import evaluate_predictions
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.metrics import (
    COLUMNS,
    count_rows,
    evaluation_rows,
    load_metrics,
    model_columns,
    table_rows,
    value_rows,
    write_metrics,
)

SPEC = ExperimentSpec(name="baseline", preset="tiny", sensors=("optical", "dem"), seed=3)


def test_evaluation_rows_long_format():
    tidy = evaluation_rows(evaluate_predictions(_records()), experiment="baseline",
                           **model_columns(SPEC), split="test")
    assert set(tidy.columns) <= set(COLUMNS)
    assert set(tidy["region"]) == {"A", "B", "ALL"}
    assert (tidy["sensors"] == "optical+dem").all() and (tidy["seed"] == 3).all()
    lookup = tidy.set_index(["region", "metric"])["value"]
    iou_a, iou_b = 91 / 104, 5 / 10
    assert lookup[("A", "iou")] == pytest.approx(iou_a)
    assert lookup[("ALL", "iou")] == pytest.approx(96 / 114)
    assert lookup[("ALL", "iou_mean_of_regions")] == pytest.approx((iou_a + iou_b) / 2)
    assert lookup[("ALL", "iou_std_of_regions")] == pytest.approx(np.std([iou_a, iou_b], ddof=1))
    # Pooled overall IoU is not the unweighted mean of the region IoUs.
    assert lookup[("ALL", "iou")] != pytest.approx(lookup[("ALL", "iou_mean_of_regions")])
    assert not tidy.duplicated(["region", "metric"]).any()
    with pytest.raises(ValueError, match="evaluate_predictions"):
        evaluation_rows(pd.DataFrame({"region": ["A"]}))


def test_count_table_and_value_rows():
    rows = count_rows({"tp": 2, "fp": 1, "fn": 1, "tn": 6}, experiment="e", region="A")
    assert list(rows.metric) == ["iou", "precision", "recall"]
    assert rows.set_index("metric").value["iou"] == pytest.approx(0.5)
    table = pd.DataFrame({"split": ["test", "val"], "region": ["A", "B"], "ece": [0.1, 0.2],
                          "experiment": ["x", "y"]})
    tidy = table_rows(table, {"ece": "ece"}, **model_columns(SPEC))
    assert list(tidy.experiment) == ["x", "y"] and list(tidy.value) == [0.1, 0.2]
    assert (tidy.model == "glavitu").all()
    facts = value_rows({"parameter_count": 10, "train_seconds": 1.5}, experiment="e")
    assert list(facts.metric) == ["parameter_count", "train_seconds"]


def test_written_files_have_every_column_and_read_back(tmp_path):
    rows = count_rows({"tp": 2, "fp": 1, "fn": 1, "tn": 6}, experiment="e", region="A")
    path = write_metrics(tmp_path / "metrics" / "02_x.csv", "02_x", rows)
    frame = pd.read_csv(path, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert (frame.chapter == "02_x").all() and (frame.split == "").all()
    assert not list((tmp_path / "metrics").glob(".*"))  # no temporary file left behind
    loaded = load_metrics(tmp_path)
    assert len(loaded) == 3 and loaded.value.dtype == float
    assert load_metrics(tmp_path / "none").empty
