"""Sensor ablation: optical + DEM against + SAR, + thermal and all sensors, over several seeds.

Each added sensor set is trained and evaluated only on the regions whose tiles carry all of its
sensors, and compared with a *matched* optical + DEM model trained on exactly those regions with
the same seed, so that a difference measures the sensor, not a change of training data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import h5py
import numpy as np
import pandas as pd

from glacier_mapping.strategies import (
    ExperimentSpec,
    TrainedModel,
    evaluate_split,
    global_experiment,
    predict_split,
    tidy_metrics,
)
from glacier_mapping.workflow import Context

BASELINE = "optical+dem"
SENSOR_SETS: dict[str, tuple[str, ...]] = {
    BASELINE: ("optical", "dem"),
    "+SAR": ("optical", "dem", "co_pol_sar", "cross_pol_sar", "in_sar"),
    "+thermal": ("optical", "dem", "thermal"),
    "all": ("optical", "dem", "co_pol_sar", "cross_pol_sar", "in_sar", "thermal"),
}


def _regions_with(path: str, sensors: Sequence[str]) -> set[str]:
    """Regions of a tile file whose every tile carries all ``sensors``."""
    has: dict[str, bool] = {}
    with h5py.File(path, "r") as handle:
        for group in handle.values():
            region = group.attrs["region"]
            region = region.decode() if isinstance(region, bytes) else str(region)
            has[region] = has.get(region, True) and all(s in group for s in sensors)
    return {region for region, ok in has.items() if ok}


def ablation_regions(context: Context) -> dict[str, list[str]]:
    """For each sensor set, the regions whose training and test tiles carry all its sensors."""
    bench = context.benchmark
    return {
        name: sorted(_regions_with(bench.train, sensors) & _regions_with(bench.test, sensors))
        for name, sensors in SENSOR_SETS.items()
    }


def sensor_set_name(sensors: Sequence[str]) -> str:
    """The name of a sensor set in :data:`SENSOR_SETS`."""
    for name, members in SENSOR_SETS.items():
        if tuple(sensors) == members:
            return name
    raise ValueError(f"Sensors {list(sensors)} are not one of the ablation sets.")


def ablation_experiments(
    context: Context, regions: dict[str, list[str]], seeds: Sequence[int] | None = None
) -> list[ExperimentSpec]:
    """Every added sensor set and its matched optical + DEM baseline, for every seed.

    Specs that coincide (e.g. the baseline matched to ``+SAR`` and to ``all`` when both have
    the same regions) appear once; the store would share them anyway.
    """
    seeds = list(seeds or context.profile.experiments["ablation_seeds"])
    base = global_experiment(context)
    specs: dict[tuple, ExperimentSpec] = {}
    for name, sensors in SENSOR_SETS.items():
        if name == BASELINE or not regions[name]:
            continue
        for seed in seeds:
            for set_name, members in ((name, sensors), (BASELINE, SENSOR_SETS[BASELINE])):
                spec = dataclasses.replace(
                    base, name=f"ablation-{set_name}-{'-'.join(regions[name])}-seed{seed}",
                    sensors=members, regions=tuple(regions[name]), seed=seed,
                )
                specs.setdefault((members, tuple(regions[name]), seed), spec)
    return list(specs.values())


def evaluate_ablation(
    context: Context, trained: Sequence[TrainedModel], regions: dict[str, list[str]],
    chapter: str = "04_sar_thermal_ablation",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test IoU per region, sensor set and seed, and the same as tidy metric rows.

    Returns:
        ``(per_seed, tidy)``; ``per_seed`` has columns ``region``, ``sensor set``, ``seed``,
        ``trained on`` (the comparison group: the training regions), ``iou``.
    """
    rows, tidy = [], []
    for model in trained:
        spec = model.spec
        predictions = predict_split(context, model, "test", regions=list(spec.regions))
        evaluation = evaluate_split(context, predictions)
        tidy.append(tidy_metrics(evaluation, model, chapter, "test"))
        for row in evaluation[evaluation.level == "region"].itertuples():
            rows.append({"region": row.region, "sensor set": sensor_set_name(spec.sensors),
                         "seed": spec.seed, "trained on": "+".join(spec.regions),
                         "iou": row.iou})
    del regions  # the training regions are carried by each spec
    return pd.DataFrame(rows), pd.concat(tidy, ignore_index=True)


def compare_to_baseline(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of each sensor set's IoU difference from its matched baseline.

    The verdict is ``better``/``worse`` only when |mean difference| exceeds the standard
    deviation of the per-seed differences; with one seed there is no spread and the verdict is
    ``undetermined (1 seed)``.
    """
    baseline = per_seed[per_seed["sensor set"] == BASELINE]
    added = per_seed[per_seed["sensor set"] != BASELINE]
    merged = added.merge(baseline, on=["region", "seed", "trained on"],
                         suffixes=("", " baseline"))
    merged["difference"] = merged["iou"] - merged["iou baseline"]
    rows = []
    for (region, name), group in merged.groupby(["region", "sensor set"]):
        diffs = group["difference"].to_numpy(dtype=float)
        spread = float(np.std(diffs, ddof=1)) if diffs.size > 1 else float("nan")
        mean = float(diffs.mean())
        if diffs.size < 2:
            verdict = "undetermined (1 seed)"
        elif abs(mean) > spread:
            verdict = "better" if mean > 0 else "worse"
        else:
            verdict = "no difference"
        rows.append({"region": region, "sensor set": name, "seeds": diffs.size,
                     "baseline IoU": group["iou baseline"].mean(), "IoU": group["iou"].mean(),
                     "mean difference": mean, "spread": spread, "verdict": verdict})
    return pd.DataFrame(rows).set_index(["region", "sensor set"])
