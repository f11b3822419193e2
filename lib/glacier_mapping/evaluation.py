"""Evaluation: glacier-class confusion counts and IoU/precision/recall/F1 pooled per level."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.data.schema import GLACIER_CLASS

COUNT_COLUMNS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
SCORE_NAMES: tuple[str, ...] = ("iou", "precision", "recall", "f1", "accuracy")
OVERALL = "ALL"


def confusion_counts(
    pred_class: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None
) -> dict[str, int]:
    """Count glacier-class (class 1) true/false positives/negatives of one tile.

    Args:
        pred_class: ``(H, W)`` predicted classes, 0 (background) or 1 (glacier).
        label: ``(H, W)`` reference classes 0/1, or ``(H, W, 2)`` one-hot (possibly label
            smoothed). One-hot pixels without a dominant class (all zeros: padding) are
            excluded.
        valid: Optional ``(H, W)`` mask; False pixels (nodata, padding) are excluded.

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` pixel counts as Python ints.
    """
    pred_class = np.asarray(pred_class)
    label = np.asarray(label)
    if pred_class.ndim != 2:
        raise ValueError(f"pred_class must be (H, W), got shape {pred_class.shape}.")
    mask = np.ones(pred_class.shape, dtype=bool) if valid is None else np.asarray(valid, bool)
    if label.ndim == 3:
        if label.shape[-1] != 2:
            raise ValueError(f"A one-hot label must be (H, W, 2), got shape {label.shape}.")
        mask = mask & (label[..., 0] != label[..., 1])
        label = np.argmax(label, axis=-1)
    if label.shape != pred_class.shape or mask.shape != pred_class.shape:
        raise ValueError(
            f"Shapes differ: pred_class {pred_class.shape}, label {label.shape}, valid "
            f"{mask.shape}; they must share (H, W)."
        )
    for name, classes in (("pred_class", pred_class), ("label", label)):
        if not np.all(np.isin(classes[mask], (0, 1))):
            raise ValueError(
                f"{name} must hold classes 0/1 in valid pixels; mark other values (e.g. "
                "nodata) invalid with the valid mask."
            )
    predicted = (pred_class == GLACIER_CLASS)[mask]
    truth = (label == GLACIER_CLASS)[mask]
    return {
        "tp": int(np.sum(predicted & truth)),
        "fp": int(np.sum(predicted & ~truth)),
        "fn": int(np.sum(~predicted & truth)),
        "tn": int(np.sum(~predicted & ~truth)),
    }


def metrics_from_counts(counts: Mapping[str, float]) -> dict[str, float]:
    """Return glacier-class IoU, precision, recall, F1 and pixel accuracy from counts.

    IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2 TP / (2 TP + FP + FN), accuracy = (TP + TN) / all. A metric whose denominator is
    zero (e.g. IoU of a tile with no glacier in reference or prediction) is NaN: undefined,
    not perfect or failed.
    """
    missing = [name for name in COUNT_COLUMNS if name not in counts]
    if missing:
        raise ValueError(f"counts lacks {missing}; expected keys {list(COUNT_COLUMNS)}.")
    tp, fp, fn, tn = (float(counts[name]) for name in COUNT_COLUMNS)
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2.0 * tp, 2.0 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def evaluate_predictions(records: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Pool confusion counts per tile, subregion, region and overall, then compute metrics.

    Counts are summed before the ratios are taken (the original's pooling over all tiles of
    a region), so large tiles weigh more than small ones.

    Args:
        records: Rows with ``tile``, ``region``, ``tp``, ``fp``, ``fn``, ``tn`` and
            optionally ``subregion`` (rows without one are left out of the subregion level).

    Returns:
        A tidy frame with columns ``level`` (tile/subregion/region/overall), ``name``,
        ``region``, the counts and the metrics; the overall row is named ``ALL`` with region
        ``ALL``.
    """
    frame = pd.DataFrame(list(records) if not isinstance(records, pd.DataFrame) else records)
    required = ["tile", "region", *COUNT_COLUMNS]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}; they need {required} (+ subregion).")
    if frame.empty:
        raise ValueError("records is empty; evaluate at least one tile.")
    counts = frame[list(COUNT_COLUMNS)]
    if counts.isna().any().any() or (counts < 0).any().any():
        raise ValueError("Counts tp, fp, fn, tn must be non-negative numbers without NaN.")
    if "subregion" not in frame.columns:
        frame = frame.assign(subregion=None)
    frame = frame.astype({"tile": str, "region": str})

    tables = []
    for level in ("tile", "subregion", "region"):
        pooled = (
            frame.dropna(subset=[level])
            .groupby(list(dict.fromkeys([level, "region"])), sort=True)[list(COUNT_COLUMNS)]
            .sum()
            .reset_index()
        )
        tables.append(pooled.assign(level=level, name=pooled[level]))
    overall = frame[list(COUNT_COLUMNS)].sum().to_frame().T
    tables.append(overall.assign(level="overall", name=OVERALL, region=OVERALL))
    result = pd.concat(tables, ignore_index=True)
    result[list(COUNT_COLUMNS)] = result[list(COUNT_COLUMNS)].astype("int64")
    metrics = pd.DataFrame([metrics_from_counts(row) for row in result.to_dict("records")])
    result = pd.concat([result, metrics], axis=1)
    return result[["level", "name", "region", *COUNT_COLUMNS, *SCORE_NAMES]]


def paper_average(
    region_iou: Mapping[str, float] | pd.Series | Sequence[float],
) -> tuple[float, float]:
    """Return the paper's headline average: the unweighted mean of region IoUs and its spread.

    Every region counts once, whatever its size. The spread is the sample standard
    deviation (``ddof=1``; NaN for a single region). Regions whose IoU is NaN (no glacier in
    reference or prediction) are left out; with none left both values are NaN.
    """
    values = np.asarray(
        list(region_iou.values()) if isinstance(region_iou, Mapping) else region_iou,
        dtype=np.float64,
    )
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    spread = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    return float(np.mean(values)), spread


def _ratio(numerator: float, denominator: float) -> float:
    """Return ``numerator / denominator``, NaN for a zero denominator."""
    return numerator / denominator if denominator > 0 else float("nan")
