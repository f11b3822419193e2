"""Chapter 04 (SAR and thermal ablation): the findings over paired seeds."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS
from glacier_mapping.experiments.ablation import BASELINE, sensor_set_name
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import Estimate
from glacier_mapping.workflow import Context

CHAPTER = "04_sar_thermal_ablation"


def ablation_findings(context: Context, models: Sequence[Experiment],
                      per_seed: pd.DataFrame) -> list[Finding]:
    """Chapter 04: SAR in every region, thermal little; t intervals over paired seeds."""
    arms = {m.card.name: sensor_set_name(m.spec.sensors) for m in models}
    late = evidence.unconverged(histories(models))
    seeds = int(per_seed["seed"].nunique())
    sar_region, sar = evidence.weakest_region(evidence.seed_gains(per_seed, "+SAR", BASELINE))
    sar = Estimate(sar.value, sar.low, sar.high, f"weakest region {sar_region}: {sar.method}",
                   sar.n)
    thermal = evidence.mean_seed_gain(per_seed, "+thermal", BASELINE)

    def of(*arm_names: str) -> tuple[list[str], list[str]]:
        used = [name for name, arm in arms.items() if arm in arm_names]
        return used, [name for name in used if name in late]

    sar_models, sar_late = of("+SAR", BASELINE)
    thermal_models, thermal_late = of("+thermal", BASELINE)
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS["sar_helps_everywhere"], sar, synthetic=context.synthetic,
              models=sar_models, unconverged=sar_late, seeds=seeds),
        judge(CLAIMS["thermal_adds_little"], thermal, synthetic=context.synthetic,
              models=thermal_models, unconverged=thermal_late, seeds=seeds),
    ])
