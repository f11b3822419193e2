"""Sensor ablation: optical + DEM against + SAR, + thermal and all sensors, over several seeds.

Every sensor set is trained and evaluated on the same regions, those whose tiles carry all
sensors, and compared with the optical + DEM model of the same seed trained on exactly those
regions, so that a difference measures the sensor, not a change of training data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from glacier_mapping.data.splits import regions_with_sensors
from glacier_mapping.experiments.strategies import ExperimentSpec, global_experiment
from glacier_mapping.uncertainty import seed_interval
from glacier_mapping.workflow import Context

BASELINE = "optical+dem"
SENSOR_SETS: dict[str, tuple[str, ...]] = {
    BASELINE: ("optical", "dem"),
    "+SAR": ("optical", "dem", "co_pol_sar", "cross_pol_sar", "in_sar"),
    "+thermal": ("optical", "dem", "thermal"),
    "all": ("optical", "dem", "co_pol_sar", "cross_pol_sar", "in_sar", "thermal"),
}


def ablation_regions(context: Context) -> dict[str, list[str]]:
    """For each sensor set, the regions whose training and test tiles carry all its sensors."""
    bench = context.benchmark
    return {
        name: sorted(regions_with_sensors(bench.train, sensors)
                     & regions_with_sensors(bench.test, sensors))
        for name, sensors in SENSOR_SETS.items()
    }


def common_regions(regions: dict[str, list[str]]) -> list[str]:
    """Regions where every sensor set can be trained and evaluated (all sensors present).

    Training every sensor set on these regions makes one optical + DEM model per seed the
    matched baseline of all three additions, which keeps the ablation affordable on a CPU.
    """
    return regions["all"]


def sensor_set_name(sensors: Sequence[str]) -> str:
    """The name of a sensor set in :data:`SENSOR_SETS`."""
    for name, members in SENSOR_SETS.items():
        if tuple(sensors) == members:
            return name
    raise ValueError(f"Sensors {list(sensors)} are not one of the ablation sets.")


def ablation_experiments(
    context: Context, regions: Sequence[str], seeds: Sequence[int] | None = None
) -> list[ExperimentSpec]:
    """Every sensor set trained on the same ``regions``, for every seed.

    The schedule is the profile's global one, with ``experiments.ablation_epochs`` epochs and
    the ``experiments.ablation_preset`` model size when the profile sets them: a dozen models
    must fit the CPU budget *and* train until their validation IoU levels off, and a smaller
    model that converged says more about a sensor than a larger one that did not.
    """
    if not regions:
        raise ValueError(
            "No region carries every sensor (optical, DEM, SAR, coherence, thermal); the "
            "ablation needs at least one. Check the benchmark's sensor availability (chapter 01)."
        )
    settings = context.profile.experiments
    seeds = list(seeds or settings.ablation_seeds)
    sets = ablation_sets(context)
    base = global_experiment(context, regions=regions)
    epochs = settings.ablation_epochs or base.epochs
    preset = settings.ablation_preset or base.preset
    base = dataclasses.replace(base, epochs=epochs, preset=preset,
                               restart_epochs=tuple(e for e in base.restart_epochs if e < epochs)
                               + (epochs,))
    return [
        dataclasses.replace(base, name=f"ablation-{name}-seed{seed}", sensors=sensors, seed=seed)
        for seed in seeds for name, sensors in sets.items()
    ]


def ablation_sets(context: Context) -> dict[str, tuple[str, ...]]:
    """The sensor sets the profile trains (``experiments.ablation_sets``; default all).

    Raises:
        ValueError: for a name that is not in :data:`SENSOR_SETS` or a list without the
            optical + DEM baseline.
    """
    names = list(context.profile.experiments.ablation_sets or SENSOR_SETS)
    unknown = [name for name in names if name not in SENSOR_SETS]
    if unknown or BASELINE not in names:
        raise ValueError(
            f"Profile {context.profile.name!r}: experiments.ablation_sets={names!r} must name "
            f"sets of {list(SENSOR_SETS)} and include the baseline {BASELINE!r}."
        )
    return {name: SENSOR_SETS[name] for name in names}


def compare_to_baseline(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each sensor set's IoU difference from its matched baseline.

    Each model is compared with the optical + DEM model of the same seed; the 95 % t interval
    over seeds gives the verdict: ``better``/``worse`` when it excludes zero, ``no difference``
    otherwise, ``undetermined (1 seed)`` without an interval (the findings' rule).
    """
    baseline = per_seed[per_seed["sensor set"] == BASELINE]
    added = per_seed[per_seed["sensor set"] != BASELINE]
    merged = added.merge(baseline, on=["region", "seed", "trained on"],
                         suffixes=("", " baseline"))
    merged["difference"] = merged["iou"] - merged["iou baseline"]
    rows = []
    for (region, name), group in merged.groupby(["region", "sensor set"]):
        estimate = seed_interval(group["difference"].tolist())
        if not estimate.has_interval:
            verdict = "undetermined (1 seed)"
        elif estimate.low > 0 or estimate.high < 0:
            verdict = "better" if estimate.value > 0 else "worse"
        else:
            verdict = "no difference"
        rows.append({"region": region, "sensor set": name, "seeds": estimate.n,
                     "baseline IoU": group["iou baseline"].mean(), "IoU": group["iou"].mean(),
                     "mean difference": estimate.value, "interval low": estimate.low,
                     "interval high": estimate.high, "verdict": verdict})
    columns = ["region", "sensor set", "seeds", "baseline IoU", "IoU", "mean difference",
               "interval low", "interval high", "verdict"]  # no rows: only the baseline ran
    return pd.DataFrame(rows, columns=columns).set_index(["region", "sensor set"])
