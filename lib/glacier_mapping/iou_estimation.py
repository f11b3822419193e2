"""Glacier IoU estimated without reference data, from calibrated pixel confidence.

Each pixel's calibrated confidence ``c`` is read as the probability that its predicted class is
right. With G the pixels predicted glacier and B those predicted background::

    E[TP] = sum_G c,  E[FP] = sum_G (1 - c),  E[FN] = sum_B (1 - c)
    IoU_hat = E[TP] / (E[TP] + E[FP] + E[FN])

Expected counts are plain sums, so they are accumulated per tile and pooled over a region or a
scene with :func:`pool_counts` in bounded memory, exactly like true confusion counts.

Stands in for: IoU against reference outlines. Breaks down where the calibration does not hold
(a region or season unlike the validation data), and it ignores spatial correlation of errors,
which widens the spread of the true IoU around the estimate on small tiles.

Over a split's cached predictions: :func:`estimate_tiles` gives true and estimated IoU per tile,
:func:`pool_estimates` pools them per region or scene, :func:`quality_table` states how well the
estimate tracks the truth, and :func:`regional_diagnosis` sets each region's error beside the
calibrator's ECE there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from glacier_mapping.calibration import Calibrator, ece_table, reliability_tables
from glacier_mapping.data.schema import GLACIER_CLASS
from glacier_mapping.evaluation import COUNT_COLUMNS, OVERALL, confusion_counts, metrics_from_counts
from glacier_mapping.predictions import iter_predictions, labelled_mask
from glacier_mapping.store import Artifact
from glacier_mapping.workflow import Context

#: Keys of an expected-counts dictionary (``tn`` = expected true negatives, ``n`` = pixels).
COUNT_KEYS: tuple[str, ...] = ("tp", "fp", "fn", "tn", "n")


def expected_counts(
    pred_class: np.ndarray, calibrated_conf: np.ndarray, valid: np.ndarray | None = None
) -> dict[str, float]:
    """Expected confusion counts of one tile (or window, or scene).

    Args:
        pred_class: Predicted class per pixel (1 = glacier, 0 = background) or a boolean
            glacier mask, any shape.
        calibrated_conf: Calibrated confidence in [0, 1], same shape.
        valid: Optional mask of pixels to count, same shape.

    Returns:
        ``{"tp", "fp", "fn", "tn", "n"}`` as floats.

    Raises:
        ValueError: if the shapes differ or a counted confidence is outside [0, 1].
    """
    pred_class = np.asarray(pred_class)
    conf = np.asarray(calibrated_conf, dtype=np.float64)
    if pred_class.shape != conf.shape or (valid is not None and
                                          np.shape(valid) != conf.shape):
        raise ValueError(
            "pred_class, calibrated_conf and valid must have the same shape; got "
            f"{pred_class.shape}, {conf.shape}, {None if valid is None else np.shape(valid)}."
        )
    glacier = (pred_class == GLACIER_CLASS) if pred_class.dtype != bool else pred_class
    if valid is not None:
        mask = np.asarray(valid).astype(bool)
        glacier, conf = glacier[mask], conf[mask]
    if conf.size and not (np.all(np.isfinite(conf)) and conf.min() >= 0 and conf.max() <= 1):
        raise ValueError("calibrated_conf must be finite and in [0, 1] on counted pixels.")
    conf_glacier = float(conf[glacier].sum())
    conf_background = float(conf[~glacier].sum())
    n_glacier = int(glacier.sum())
    n_background = int(conf.size - n_glacier)
    return {
        "tp": conf_glacier,
        "fp": n_glacier - conf_glacier,
        "fn": n_background - conf_background,
        "tn": conf_background,
        "n": float(conf.size),
    }


def pool_counts(counts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sum expected (or true) counts over tiles, e.g. all tiles of a region.

    Raises:
        ValueError: if a dictionary lacks one of :data:`COUNT_KEYS`.
    """
    pooled = dict.fromkeys(COUNT_KEYS, 0.0)
    for item in counts:
        missing = [key for key in COUNT_KEYS if key not in item]
        if missing:
            raise ValueError(f"Counts dictionary lacks {missing}; build it with expected_counts.")
        for key in COUNT_KEYS:
            pooled[key] += float(item[key])
    return pooled


def estimate_iou(counts: Mapping[str, float]) -> float:
    """Estimated glacier IoU ``tp / (tp + fp + fn)`` of (pooled) expected counts.

    Returns:
        The estimate, or NaN when the denominator is zero (no glacier predicted and no
        expected missed glacier).
    """
    denominator = counts["tp"] + counts["fp"] + counts["fn"]
    return float(counts["tp"] / denominator) if denominator > 0 else float("nan")


def estimation_quality(true: np.ndarray, estimated: np.ndarray) -> dict[str, float]:
    """Agreement between true and estimated IoU over tiles, regions or scenes.

    Pairs where either value is NaN are dropped.

    Args:
        true: True IoUs.
        estimated: Estimated IoUs, same length.

    Returns:
        ``pearson_r`` (NaN with fewer than two pairs or no spread), ``mae`` (mean absolute
        error), ``bias`` (mean of estimated minus true) and ``n`` (pairs used).

    Raises:
        ValueError: if the lengths differ.
    """
    true = np.asarray(true, dtype=np.float64).ravel()
    estimated = np.asarray(estimated, dtype=np.float64).ravel()
    if true.shape != estimated.shape:
        raise ValueError(
            f"true and estimated must have the same length; got {true.size} and {estimated.size}."
        )
    keep = np.isfinite(true) & np.isfinite(estimated)
    true, estimated = true[keep], estimated[keep]
    n = int(true.size)
    if n == 0:
        return {"pearson_r": float("nan"), "mae": float("nan"), "bias": float("nan"), "n": 0}
    spread = n >= 2 and true.std() > 0 and estimated.std() > 0
    return {
        "pearson_r": float(np.corrcoef(true, estimated)[0, 1]) if spread else float("nan"),
        "mae": float(np.mean(np.abs(estimated - true))),
        "bias": float(np.mean(estimated - true)),
        "n": n,
    }


def estimate_tiles(
    context: Context, predictions: Artifact, calibrator: Calibrator, split: str
) -> pd.DataFrame:
    """True and expected confusion counts, true and estimated IoU, per tile.

    Columns: ``split, tile, region, subregion, acquisition, date, scene`` (``<REGION>_<date>``,
    one acquisition), ``tp, fp, fn, tn``, ``e_tp, e_fp, e_fn, e_tn, n`` (expected counts from
    calibrated confidence), ``iou`` and ``iou_estimated``.
    """
    rows = []
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        predicted = np.argmax(probs, axis=-1)
        truth = confusion_counts(predicted, np.argmax(tile.labels, axis=-1), mask)
        expected = expected_counts(predicted, calibrator.calibrated_confidence(probs), mask)
        rows.append({
            "split": split, **{k: row[k] for k in ("tile", "region", "subregion")},
            "acquisition": row.get("acquisition", ""), "date": row.get("date", ""),
            "scene": f"{row['region']}_{row.get('date', '')}", **truth,
            **{f"e_{k}": v for k, v in expected.items()},
            "iou": metrics_from_counts(truth)["iou"], "iou_estimated": estimate_iou(expected),
        })
    return pd.DataFrame(rows)


def pool_estimates(tiles: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Pool true and expected counts over groups of tiles; IoU and estimate of each group."""
    sums = [*COUNT_COLUMNS, "e_tp", "e_fp", "e_fn", "e_tn", "e_n"]
    pooled = tiles.groupby(list(by), sort=True)[sums].sum().reset_index()
    pooled["tiles"] = tiles.groupby(list(by), sort=True).size().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled["iou"] = pooled["tp"] / (pooled["tp"] + pooled["fp"] + pooled["fn"])
        pooled["iou_estimated"] = pooled["e_tp"] / (pooled["e_tp"] + pooled["e_fp"]
                                                    + pooled["e_fn"])
    pooled["error"] = pooled["iou_estimated"] - pooled["iou"]
    return pooled


def estimation_levels(tiles: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tiles, test regions and independent scenes (``estimate_tiles`` rows pooled)."""
    test = tiles[tiles["split"] == "test"]
    independent = tiles[tiles["split"] != "test"]
    levels = {"tile": tiles}
    if not test.empty:
        levels["region (test)"] = pool_estimates(test, ["split", "region"])
    if not independent.empty:
        levels["scene (independent)"] = pool_estimates(independent, ["split", "region", "scene"])
    return levels


def quality_table(levels: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Pearson r, MAE, bias and n of the estimate at each level (tile, region, scene)."""
    return pd.DataFrame([
        {"level": level, **estimation_quality(frame["iou"].to_numpy(),
                                              frame["iou_estimated"].to_numpy())}
        for level, frame in levels.items()
    ]).set_index("level")


def largest_errors(frame: pd.DataFrame, columns: Sequence[str], count: int = 5) -> pd.DataFrame:
    """The ``count`` rows with the largest absolute estimation error (NaN IoUs dropped)."""
    data = frame.assign(error=frame["iou_estimated"] - frame["iou"]).dropna(subset=["error"])
    order = data["error"].abs().sort_values(ascending=False).index
    return data.loc[order, [*columns, "iou", "iou_estimated", "error"]].head(count)


def regional_diagnosis(
    context: Context, sources: Mapping[str, Artifact], calibrator: Calibrator,
    tiles: pd.DataFrame,
) -> pd.DataFrame:
    """Per split and region: true and estimated IoU, their error and the calibrator's ECE.

    Explains failures of the estimate: where calibration does not hold (high ECE), expected
    counts are biased. ECE is computed with 100 bins over the region's tiles of that split.
    """
    ece = pd.concat([ece_table(reliability_tables(context, predictions, {"chosen": calibrator}),
                               split) for split, predictions in sources.items()],
                    ignore_index=True)
    ece = ece[ece["region"] != OVERALL][["split", "region", "ece"]]
    pooled = pool_estimates(tiles, ["split", "region"])
    table = pooled[["split", "region", "tiles", "iou", "iou_estimated", "error"]].merge(
        ece, on=["split", "region"], how="left")
    return table.sort_values("error", key=np.abs, ascending=False).reset_index(drop=True)
