"""Intervals for the findings: paired bootstrap over tiles, t intervals over seeds.

A tile-level bootstrap resamples the *same* tiles for every model compared (paired), within each
region (stratified), and recomputes the pooled statistic; it measures how much the result
depends on which tiles the test split happens to hold, not how much it depends on the training
seed. A seed interval measures the latter, from models trained with different seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from glacier_mapping.evaluation import metrics_from_counts, paper_average

#: Two-sided coverage of every interval.
LEVEL = 0.95
#: Bootstrap resamples.
RESAMPLES = 1000


@dataclass(frozen=True)
class Estimate:
    """An effect with its interval.

    Attributes:
        value: The effect measured on all the data.
        low: Lower end of the interval (NaN when it cannot be estimated).
        high: Upper end of the interval.
        method: How the interval was obtained, in words.
        n: Independent units behind the interval (tiles, regions or seeds).
    """

    value: float
    low: float
    high: float
    method: str
    n: int

    @property
    def has_interval(self) -> bool:
        """Whether both ends of the interval are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)


def pooled_iou(counts: pd.DataFrame) -> float:
    """Glacier IoU from summed ``tp``, ``fp``, ``fn`` (NaN when all are zero)."""
    sums = {name: float(counts[name].sum()) for name in ("tp", "fp", "fn")}
    return metrics_from_counts({**sums, "tn": 0.0})["iou"]


def mean_of_region_ious(counts: pd.DataFrame) -> float:
    """The paper's average: the unweighted mean over regions of the pooled region IoUs."""
    return paper_average([pooled_iou(group) for _, group in counts.groupby("region")])[0]


def bootstrap(
    tiles: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    unit: str = "tile",
    strata: str | None = "region",
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """Percentile interval of ``statistic`` over resamples of ``unit`` within ``strata``.

    ``tiles`` may hold several rows per unit (one per model compared): a resample draws units and
    keeps all their rows, so comparisons stay paired. Without a stratum of two units or more
    there is no interval.
    """
    if unit not in tiles:
        raise ValueError(f"tiles lack the unit column {unit!r} (columns: {list(tiles.columns)}).")
    value = float(statistic(tiles))
    units = tiles[unit].astype(str).to_numpy()
    rows_of = {name: np.flatnonzero(units == name) for name in np.unique(units)}
    groups = (tiles.groupby(strata)[unit].unique() if strata else
              pd.Series({"all": tiles[unit].unique()}))
    groups = [np.asarray(g, dtype=str) for g in groups]
    n = sum(len(g) for g in groups)
    method = (f"paired bootstrap over {n} {unit}s"
              + (f" within {strata}s" if strata else "") + f", {resamples} resamples")
    if max(len(g) for g in groups) < 2:  # one unit per stratum: resampling changes nothing
        return Estimate(value, float("nan"), float("nan"), method, n)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for index in range(resamples):
        picked = [g[rng.integers(0, len(g), len(g))] for g in groups]
        rows = np.concatenate([rows_of[name] for names in picked for name in names])
        draws[index] = statistic(tiles.iloc[rows])
    draws = draws[np.isfinite(draws)]
    if draws.size < resamples // 2:
        return Estimate(value, float("nan"), float("nan"), method, n)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Estimate(value, float(low), float(high), method, n)


def seed_interval(values: Sequence[float], level: float = LEVEL,
                  what: str = "seeds") -> Estimate:
    """Mean of per-seed effects with a Student-t interval (no interval below two seeds)."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(data.size)
    method = f"t interval over {n} {what}"
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), method, 0)
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), method, n)
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, method, n)


def correlation_interval(x: Sequence[float], y: Sequence[float],
                         level: float = LEVEL, what: str = "points") -> Estimate:
    """Pearson r with a Fisher-z interval (no interval below four points)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    method = f"Fisher-z interval of Pearson r over {n} {what}"
    if n < 3 or np.std(a) == 0 or np.std(b) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), method, n)
    r = float(np.corrcoef(a, b)[0, 1])
    if n < 4:
        return Estimate(r, float("nan"), float("nan"), method, n)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    half = stats.norm.ppf(0.5 + level / 2.0) / math.sqrt(n - 3)
    return Estimate(r, math.tanh(z - half), math.tanh(z + half), method, n)
