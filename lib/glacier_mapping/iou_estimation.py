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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from glacier_mapping.data.schema import GLACIER_CLASS

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
