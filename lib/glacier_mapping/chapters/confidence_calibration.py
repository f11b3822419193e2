"""Chapter 05 (confidence calibration): the confidence band, ECE rows and the finding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.calibration import (
    UNCALIBRATED,
    Calibrator,
    ReliabilityTable,
    calibrated,
    reliability_diagram_data,
)
from glacier_mapping.claims import CLAIMS
from glacier_mapping.evaluation import OVERALL
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import model_columns, table_rows
from glacier_mapping.predictions import iter_predictions, labelled_mask, two_class
from glacier_mapping.trained_models import histories
from glacier_mapping.workflow import Context

CHAPTER = "05_confidence_calibration"


#: Threshold of the "95 % confidence band" of the original demo.
BAND_THRESHOLD = 0.95


def diagram_frame(
    tables: Mapping[tuple[str, str], ReliabilityTable], names: Sequence[str],
    region: str = OVERALL, n_bins: int = 10,
) -> pd.DataFrame:
    """Reliability-diagram bins (10 by default) of several calibrators, with a ``calibrator``."""
    frames = [reliability_diagram_data(tables[(name, region)], n_bins).assign(calibrator=name)
              for name in names if (name, region) in tables]
    return pd.concat(frames, ignore_index=True)


def confidence_band(
    glacier: np.ndarray, calibrator: Calibrator | None, threshold: float = BAND_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated confidence of a glacier-probability map and its "below threshold" band.

    Returns:
        ``(confidence, band)``: float ``(H, W)`` and boolean ``(H, W)`` (True below threshold).
    """
    conf = calibrated(calibrator, two_class(glacier))
    return conf, conf < threshold


def band_summary(
    band: np.ndarray, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray
) -> dict[str, float]:
    """Share of valid pixels inside the band, share of wrong pixels it covers, accuracy outside.

    Shares with an empty denominator (no error, no pixel outside the band) are NaN.
    """
    band, valid = np.asarray(band, bool), np.asarray(valid, bool)
    wrong = (np.asarray(predicted, bool) != np.asarray(truth, bool)) & valid
    inside = band & valid
    outside = valid & ~band
    return {
        "band_share": float(inside.sum() / max(valid.sum(), 1)),
        "errors_in_band": float((wrong & band).sum() / wrong.sum()) if wrong.any() else math.nan,
        "accuracy_outside_band": (float(1.0 - (wrong & outside).sum() / outside.sum())
                                  if outside.any() else math.nan),
    }


def calibration_summary(ece: pd.DataFrame, chosen: str, split: str = "test") -> pd.DataFrame:
    """Pooled ECE of raw and chosen confidence on ``split``, and regions the choice makes worse.

    Returns:
        One row per line: ``what`` and ``value`` (numbers, or region codes joined by commas).
    """
    rows = ece[ece["split"] == split].pivot_table(index="region", columns="calibrator",
                                                  values="ece")
    worse = rows.index[(rows[chosen] > rows[UNCALIBRATED]) & (rows.index != OVERALL)]
    return pd.DataFrame([
        {"what": f"pooled {split} ECE, uncalibrated",
         "value": f"{rows.at[OVERALL, UNCALIBRATED]:.4f}"},
        {"what": f"pooled {split} ECE, {chosen} (chosen)",
         "value": f"{rows.at[OVERALL, chosen]:.4f}"},
        {"what": f"regions where {chosen} is worse than uncalibrated",
         "value": ", ".join(worse) or "none"},
    ]).set_index("what")


def calibration_tile_bins(context: Context, predictions: Any,
                          calibrators: Mapping[str, Any]) -> pd.DataFrame:  # noqa: ANN401
    """Per-tile reliability bins (100) of each named confidence, for a tile bootstrap of ECE.

    ``calibrators`` maps a name to a calibrator, or to None for the maximum softmax
    probability (the model's own probability of its predicted class).
    """
    rows = []
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        correct = np.argmax(probs, axis=-1) == np.argmax(tile.labels, axis=-1)
        for name, calibrator in calibrators.items():
            conf = (probs.max(axis=-1) if calibrator is None
                    else calibrated(calibrator, probs))
            table = ReliabilityTable().update(conf, correct, mask)
            for index in np.flatnonzero(table.counts):
                rows.append({"tile": row["tile"], "region": row["region"], "calibrator": name,
                             "bin": int(index), "count": int(table.counts[index]),
                             "confidence_sum": float(table.confidence_sum[index]),
                             "correct_sum": float(table.correct_sum[index])})
    return pd.DataFrame(rows)


def calibration_findings(context: Context, model: Experiment, tile_bins: pd.DataFrame,
                         baseline: str, chosen: str) -> list[Finding]:  # noqa: ANN401
    """Chapter 05: the chosen calibrator's ECE against the maximum softmax probability's."""
    late = evidence.unconverged(histories([model]))
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS["calibration_lowers_ece"],
              evidence.ece_difference(tile_bins, baseline, chosen, seed=context.seed),
              synthetic=context.synthetic, models=[model.card.name], unconverged=late),
    ])


def ece_rows(ece: pd.DataFrame, trained: Experiment) -> pd.DataFrame:
    """The ECE table (one row per calibrator, split and region) as tidy metric rows."""
    return table_rows(ece.rename(columns={"calibrator": "experiment"}), {"ece": "ece"},
                      **model_columns(trained.spec))
