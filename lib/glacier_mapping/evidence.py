"""The measurements behind the findings: effects with intervals, from a run's evaluations.

Each function takes what a chapter already computed (tile confusion counts, per-seed IoUs,
reliability tables, IoU estimates) and returns an :class:`~glacier_mapping.uncertainty.Estimate`
whose sign is chosen so that positive supports the claim it serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from glacier_mapping.calibration import ReliabilityTable, expected_calibration_error
from glacier_mapping.convergence import assess
from glacier_mapping.uncertainty import (
    Estimate,
    bootstrap,
    mean_of_region_ious,
    pooled_iou,
    seed_interval,
)


def tile_counts(evaluations: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Tile-level confusion counts of several models, one ``model`` label per evaluation.

    Args:
        evaluations: Label -> output of :func:`glacier_mapping.evaluation.evaluate_predictions`.
    """
    frames = []
    for label, evaluation in evaluations.items():
        tiles = evaluation[evaluation["level"] == "tile"]
        frames.append(tiles[["name", "region", "tp", "fp", "fn"]]
                      .rename(columns={"name": "tile"}).assign(model=label))
    if not frames:
        raise ValueError("No evaluation given; pass at least one model's evaluation.")
    return pd.concat(frames, ignore_index=True)


def model_difference(tiles: pd.DataFrame, better: str, worse: str, seed: int = 0,
                     shared_regions: bool = True) -> Estimate:
    """Mean of region IoUs of ``better`` minus ``worse``, paired bootstrap over tiles.

    With ``shared_regions`` only tiles both models were evaluated on count.
    """
    pair = tiles[tiles["model"].isin([better, worse])]
    if shared_regions:
        common = set(pair.loc[pair.model == better, "tile"]) & set(
            pair.loc[pair.model == worse, "tile"])
        pair = pair[pair["tile"].isin(common)]

    def statistic(frame: pd.DataFrame) -> float:
        return (mean_of_region_ious(frame[frame.model == better])
                - mean_of_region_ious(frame[frame.model == worse]))

    return bootstrap(pair, statistic, seed=seed)


def region_drop(tiles: pd.DataFrame, region: str, seed: int = 0) -> Estimate:
    """Mean IoU of the other regions minus ``region``'s IoU (positive: IoU drops there)."""
    if region not in set(tiles["region"]):
        return Estimate(float("nan"), float("nan"), float("nan"),
                        f"region {region} not in the evaluation", 0)

    def statistic(frame: pd.DataFrame) -> float:
        others = [pooled_iou(group) for name, group in frame.groupby("region") if name != region]
        return float(np.nanmean(others)) - pooled_iou(frame[frame.region == region])

    return bootstrap(tiles, statistic, seed=seed)


def region_iou(tiles: pd.DataFrame, region: str, seed: int = 0) -> Estimate:
    """One region's pooled IoU with a bootstrap interval over its tiles."""
    part = tiles[tiles["region"] == region]
    if part.empty:
        return Estimate(float("nan"), float("nan"), float("nan"),
                        f"region {region} not in the evaluation", 0)
    return bootstrap(part, pooled_iou, seed=seed)


def seed_gains(per_seed: pd.DataFrame, treatment: str, control: str, by: str = "sensor set",
               value: str = "iou") -> dict[str, Estimate]:
    """Per region: ``treatment`` minus ``control`` of the same seed, t interval over seeds.

    Args:
        per_seed: Rows with ``region``, ``seed``, ``by`` and ``value``.
        treatment: Value of ``by`` for the models with the addition.
        control: Value of ``by`` for the baseline models.
        by: Column naming the compared arms.
        value: Column of the compared metric.
    """
    wide = per_seed.pivot_table(index=["region", "seed"], columns=by, values=value)
    gains = (wide[treatment] - wide[control]).dropna()
    return {region: seed_interval(group.tolist(), what="seeds (paired by seed)")
            for region, group in gains.groupby(level="region")}


def mean_seed_gain(per_seed: pd.DataFrame, treatment: str, control: str,
                   by: str = "sensor set", value: str = "iou") -> Estimate:
    """Mean over regions of ``treatment - control`` per seed, t interval over seeds."""
    wide = per_seed.pivot_table(index=["region", "seed"], columns=by, values=value)
    per_seed_mean = (wide[treatment] - wide[control]).groupby(level="seed").mean().dropna()
    return seed_interval(per_seed_mean.tolist(), what="seeds (mean over regions, paired)")


def weakest_region(estimates: Mapping[str, Estimate]) -> tuple[str, Estimate]:
    """The region that decides an "in every region" claim.

    A region whose whole interval is below zero decides it (the claim fails there); otherwise
    the region with the lowest lower bound (the claim holds everywhere only if it holds there).
    Regions without an interval come first: nothing can be concluded while one exists.
    """
    if not estimates:
        raise ValueError("No region estimates given.")

    def order(item: tuple[str, Estimate]) -> tuple[int, float]:
        estimate = item[1]
        if not estimate.has_interval:
            return (1, 0.0)
        if estimate.high < 0:
            return (2, estimate.high)
        return (0, -estimate.low)

    return max(estimates.items(), key=order)


def ece_difference(tile_bins: pd.DataFrame, baseline: str, calibrated: str,
                   seed: int = 0) -> Estimate:
    """ECE of ``baseline`` minus ECE of ``calibrated`` confidence, paired bootstrap over tiles.

    Args:
        tile_bins: One row per tile, calibrator and bin with columns ``tile``, ``region``,
            ``calibrator``, ``bin``, ``count``, ``confidence_sum``, ``correct_sum``.
        baseline: Calibrator name of the reference confidence.
        calibrated: Calibrator name of the confidence expected to be better calibrated.
        seed: Seed of the bootstrap.
    """
    pair = tile_bins[tile_bins["calibrator"].isin([baseline, calibrated])]

    def ece(frame: pd.DataFrame, name: str) -> float:
        part = frame[frame.calibrator == name].groupby("bin")[
            ["count", "confidence_sum", "correct_sum"]].sum()
        table = ReliabilityTable()
        table.counts[part.index] = part["count"].to_numpy()
        table.confidence_sum[part.index] = part["confidence_sum"].to_numpy()
        table.correct_sum[part.index] = part["correct_sum"].to_numpy()
        return expected_calibration_error(table)

    return bootstrap(pair, lambda frame: ece(frame, baseline) - ece(frame, calibrated),
                     seed=seed)


def unconverged(histories: Mapping[str, pd.DataFrame]) -> list[str]:
    """Names of the models whose validation IoU had not levelled off (see ``convergence``)."""
    return [name for name, history in histories.items() if not assess(history).converged]


def convergence_table(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model: epochs, final gain and whether it levelled off, with the reason."""
    rows = []
    for name, history in histories.items():
        verdict = assess(history)
        rows.append({"model": name, "epochs": verdict.epochs,
                     "gain in final window": (round(verdict.final_gain, 3)
                                              if math.isfinite(verdict.final_gain) else None),
                     "levelled off": verdict.converged, "why": verdict.reason})
    return pd.DataFrame(rows).set_index("model")


def block_counts(predicted: np.ndarray, reference: np.ndarray, block: int,
                 valid: np.ndarray | None = None, label: str = "model") -> pd.DataFrame:
    """Confusion counts of square blocks of a map, as tile-like rows for :func:`bootstrap`.

    Used where a single scene must be resampled: blocks of ``block`` pixels stand in for tiles
    (all in one stratum, ``region`` = ``"scene"``).
    """
    predicted, reference = np.asarray(predicted, bool), np.asarray(reference, bool)
    valid = np.ones_like(predicted) if valid is None else np.asarray(valid, bool)
    rows = []
    for top in range(0, predicted.shape[0], block):
        for left in range(0, predicted.shape[1], block):
            window = (slice(top, top + block), slice(left, left + block))
            p, r, v = predicted[window] & valid[window], reference[window], valid[window]
            if not v.any():
                continue
            rows.append({"tile": f"{top}-{left}", "region": "scene", "model": label,
                         "tp": int((p & r & v).sum()), "fp": int((p & ~r & v).sum()),
                         "fn": int((~p & r & v).sum())})
    return pd.DataFrame(rows)


def pooled_difference(tiles: pd.DataFrame, better: str, worse: str, seed: int = 0) -> Estimate:
    """Pooled IoU of ``better`` minus ``worse`` over shared units, paired bootstrap."""
    pair = tiles[tiles["model"].isin([better, worse])]

    def statistic(frame: pd.DataFrame) -> float:
        return pooled_iou(frame[frame.model == better]) - pooled_iou(frame[frame.model == worse])

    return bootstrap(pair, statistic, seed=seed)
