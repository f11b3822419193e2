"""Chapter 04 (SAR and thermal ablation): test IoU per region, set and seed; the findings."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS
from glacier_mapping.experiments.ablation import BASELINE, sensor_set_name
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import evaluation_rows, model_columns
from glacier_mapping.predictions import evaluate_split, predict_split
from glacier_mapping.store import Artifact
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import Estimate
from glacier_mapping.workflow import Context

CHAPTER = "04_sar_thermal_ablation"


def predict_ablation_test(context: Context, trained: Experiment) -> Artifact:
    """Test predictions of an ablation model on its regions (the follow-up of each training)."""
    return predict_split(context, trained, "test", regions=list(trained.spec.regions))


def evaluate_ablation(
    context: Context, trained: Sequence[Experiment]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test IoU per region, sensor set and seed, and the same as tidy metric rows.

    Returns:
        ``(per_seed, tidy)``; ``per_seed`` has columns ``region``, ``sensor set``, ``seed``,
        ``trained on`` (the comparison group: the training regions), ``iou``.
    """
    rows, tidy = [], []
    for model in trained:
        spec = model.spec
        predictions = predict_ablation_test(context, model)
        evaluation = evaluate_split(context, predictions)
        tidy.append(evaluation_rows(evaluation, experiment=spec.name, **model_columns(spec),
                                    split="test"))
        for row in evaluation[evaluation.level == "region"].itertuples():
            rows.append({"region": row.region, "sensor set": sensor_set_name(spec.sensors),
                         "seed": spec.seed, "trained on": "+".join(spec.regions),
                         "iou": row.iou})
    return pd.DataFrame(rows), pd.concat(tidy, ignore_index=True)



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
