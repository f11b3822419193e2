"""Chapter 02 (GlaViTU training): the two global models, their test rows and findings."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import evaluation_rows, model_columns, value_rows
from glacier_mapping.predictions import predict_split
from glacier_mapping.trained_models import histories
from glacier_mapping.workflow import Context

CHAPTER = "02_glavitu_training"
#: Region of the "IoU drops in debris-rich areas" claim.
DEBRIS_REGION = "HMA"


def predict_test(context: Context, trained: Experiment) -> None:
    """Predict the whole test split (the follow-up of each training)."""
    predict_split(context, trained, "test")


def model_rows(trained: Experiment, evaluation: pd.DataFrame) -> pd.DataFrame:
    """A model's test metrics, parameter count, training time and best epoch as tidy rows."""
    spec, card = trained.spec, trained.card
    columns = {"experiment": spec.name, **model_columns(spec)}
    facts = {"parameter_count": card.parameter_count, "train_seconds": card.train_seconds,
             "best_epoch": card.best_epoch}
    return pd.concat([evaluation_rows(evaluation, **columns, split="test"),
                      value_rows(facts, **columns, split="", region="ALL")],
                     ignore_index=True)


def architecture_findings(context: Context, models: Mapping[str, Experiment],
                          evaluations: Mapping[str, pd.DataFrame]) -> list[Finding]:
    """Chapter 02: GlaViTU against DeepLabv3+, and the IoU drop in debris-rich HMA.

    Args:
        context: The chapter context.
        models: ``{"glavitu": Experiment, "deeplab": Experiment}``.
        evaluations: The same keys -> test-split evaluations (with tile rows).
    """
    tiles = evidence.tile_counts(evaluations)
    names = [m.card.name for m in models.values()]
    late = evidence.unconverged(histories(models.values()))
    glavitu = models["glavitu"].card.name
    synthetic = context.synthetic
    only_glavitu = tiles[tiles.model == "glavitu"]
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS["glavitu_beats_deeplab"],
              evidence.model_difference(tiles, "glavitu", "deeplab", seed=context.seed),
              synthetic=synthetic, models=names, unconverged=late, seeds=1),
        judge(CLAIMS["debris_region_drop"],
              evidence.region_drop(only_glavitu, DEBRIS_REGION, seed=context.seed),
              synthetic=synthetic, models=[glavitu],
              unconverged=[n for n in late if n == glavitu]),
        judge(CLAIMS["hma_level"], evidence.region_iou(only_glavitu, DEBRIS_REGION,
                                                        seed=context.seed),
              synthetic=synthetic, models=[glavitu],
              unconverged=[n for n in late if n == glavitu]),
    ])


def training_table(trained: Mapping[str, Experiment]) -> pd.DataFrame:
    """Size, schedule, training time and best validation IoU of each model."""
    return pd.DataFrame([
        {"architecture": m.card.architecture, "preset": m.card.preset,
         "parameter_count": m.card.parameter_count, "epochs": m.card.epochs,
         "best_epoch": m.card.best_epoch, "train_seconds": m.card.train_seconds,
         "best val glacier IoU": round(m.card.best_validation_value, 3)}
        for m in trained.values()]).set_index("architecture")
