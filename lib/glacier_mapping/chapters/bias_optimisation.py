"""Chapter 06 (bias optimisation): the region-encoding model on unseen regions, and the finding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.adaptation import slot_vector
from glacier_mapping.claims import CLAIMS
from glacier_mapping.data.schema import UNKNOWN_REGION
from glacier_mapping.data.splits import split_regions
from glacier_mapping.experiments.runner import Experiment, train_experiment
from glacier_mapping.experiments.strategies import profile_strategy_experiments
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import model_columns, table_rows
from glacier_mapping.predictions import evaluate_split, predict_with_vector, training_regions
from glacier_mapping.trained_models import histories
from glacier_mapping.workflow import Context

CHAPTER = "06_bias_optimisation"


def region_encoding_model(context: Context) -> Experiment:
    """The region-encoding GlaViTU of chapter 03 (trained once, cached)."""
    return train_experiment(context, profile_strategy_experiments(context)["region_encoding"][0])


def unseen_regions(context: Context, trained: Experiment, acquisition: str = "spatial"
                   ) -> list[str]:
    """Regions of the independent split (``acquisition`` tiles) the model never trained on."""
    known = training_regions(context, trained.spec)
    return [r for r in split_regions(context.benchmark.split_path("independent"), acquisition)
            if r not in known]


#: The three location inputs compared in chapter 06 (``experiment`` of its metric rows).
VECTOR_EXPERIMENTS: dict[str, str] = {
    "unknown_slot": "unknown slot",
    "optimised_vector": "optimised vector",
    "true_slot": "true region's slot (untrained)",
}


def region_vectors(region: str, optimised: np.ndarray) -> dict[str, np.ndarray]:
    """The three location inputs of chapter 06 for a region (keys of VECTOR_EXPERIMENTS)."""
    return {"unknown_slot": slot_vector(UNKNOWN_REGION), "optimised_vector": optimised,
            "true_slot": slot_vector(region)}


def vector_tile_counts(context: Context, model: Experiment,
                       vectors: Mapping[str, Mapping[str, np.ndarray]],
                       load_model: Any = None) -> pd.DataFrame:  # noqa: ANN401
    """Tile counts of a region-encoding model on unseen regions, one label per location input.

    Args:
        context: The chapter context.
        model: The region-encoding model.
        vectors: Region -> input name -> 12-slot vector (chapter 06's ``region_vectors``).
        load_model: Shared model loader (see ``predictions.predict_with_vector``).
    """
    evaluations: dict[str, list[pd.DataFrame]] = {}
    for region, named in vectors.items():
        for name, vector in named.items():
            predictions = predict_with_vector(context, model, vector, regions=[region],
                                              load_model=load_model)
            evaluations.setdefault(name, []).append(evaluate_split(context, predictions))
    return evidence.tile_counts({name: pd.concat(frames, ignore_index=True)
                                 for name, frames in evaluations.items()})


def bias_run_summary(runs: Mapping[str, Mapping[str, Any]], comparison: pd.DataFrame,
                     max_epochs: int) -> str:
    """Generated lines: how each bias optimisation ended and what it did to entropy and IoU.

    Args:
        runs: Region -> bias optimisation result (``epochs_run``, ``converged``,
            ``entropy_history``).
        comparison: Chapter 06's IoU table (``region``, ``experiment``, ``iou``).
        max_epochs: The profile's epoch limit.
    """
    iou = comparison.pivot(index="region", columns="experiment", values="iou")
    lines = []
    for region, run in runs.items():
        entropy = run["entropy_history"]
        ended = (f"met the stopping rule after {run['epochs_run']} epochs" if run["converged"]
                 else f"ran to the limit of {max_epochs} epochs without meeting the stopping "
                      "rule")
        change = iou.loc[region, "optimised_vector"] - iou.loc[region, "unknown_slot"]
        lines.append(f"- **{region}**: {ended}; mean entropy {entropy[0]:.4f} → "
                     f"{entropy[-1]:.4f}; IoU {iou.loc[region, 'unknown_slot']:.3f} with the "
                     f"unknown slot → {iou.loc[region, 'optimised_vector']:.3f} optimised "
                     f"({change:+.3f}).")
    return "\n".join(lines)


def bias_findings(context: Context, model: Experiment, tiles: pd.DataFrame,
                  runs: Mapping[str, Mapping[str, Any]]) -> list[Finding]:  # noqa: ANN401
    """Chapter 06: optimised vector against the unknown slot, over unseen regions' tiles.

    Args:
        context: The chapter context.
        model: The region-encoding model.
        tiles: Tile counts (:func:`evidence.tile_counts`) labelled ``optimised_vector`` and
            ``unknown_slot``.
        runs: Region -> bias optimisation result (with ``converged``).
    """
    late = evidence.unconverged(histories([model]))
    late += [f"bias optimisation {region} (stopping rule not met)"
             for region, run in runs.items() if not run["converged"]]
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS["bias_optimisation_helps"],
              evidence.model_difference(tiles, "optimised_vector", "unknown_slot",
                                        seed=context.seed),
              synthetic=context.synthetic,
              models=[model.card.name, *(f"bias optimisation {r}" for r in runs)],
              unconverged=late),
    ])


def bias_rows(comparison: pd.DataFrame, runs: Mapping[str, Mapping[str, Any]],
              trained: Experiment) -> pd.DataFrame:
    """IoU per region and location input, and epochs per optimisation, as tidy rows."""
    epochs = pd.DataFrame([{"region": region, "experiment": "optimised_vector",
                            "split": "spatial", "epochs": run["epochs_run"]}
                           for region, run in runs.items()])
    columns = model_columns(trained.spec)
    return pd.concat([table_rows(comparison, {"iou": "iou"}, **columns),
                      table_rows(epochs, {"epochs": "bias_epochs"}, **columns)],
                     ignore_index=True)
