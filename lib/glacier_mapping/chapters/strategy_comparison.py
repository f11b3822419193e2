"""Chapter 03 (strategy comparison): predictions per split, IoU tables, diagnosis and findings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.adaptation import slot_vector
from glacier_mapping.claims import CLAIMS
from glacier_mapping.convergence import assess
from glacier_mapping.data.schema import UNKNOWN_REGION
from glacier_mapping.data.splits import split_regions
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.experiments.strategies import STRATEGY_SPLITS
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import evaluation_rows, model_columns
from glacier_mapping.predictions import evaluate_split, predict_split, predict_with_vector
from glacier_mapping.store import Artifact
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import bootstrap
from glacier_mapping.workflow import Context

CHAPTER = "03_strategy_comparison"


def strategy_predictions(
    context: Context, trained: Experiment, split: str, acquisition: str | None = None
) -> Artifact | None:
    """A strategy model's predictions on the regions of a split it applies to (None: none).

    Regional and finetuned models apply only to their own regions; the others to every region
    of the split (of the given acquisition kind, for the independent split).
    """
    present = split_regions(context.benchmark.split_path(split), acquisition)
    regions = sorted(set(present) & set(trained.spec.regions or present))
    if not regions:
        return None
    return predict_split(context, trained, split, regions=regions, acquisition=acquisition)


def predict_strategy_splits(context: Context, trained: Experiment) -> None:
    """Every prediction the chapter evaluates a model on (the follow-up of each training)."""
    for split, acquisition in STRATEGY_SPLITS.values():
        strategy_predictions(context, trained, split, acquisition)


def evaluate_strategies(
    context: Context, experiments: Mapping[str, Sequence[Experiment]], split: str,
    acquisition: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Region IoUs of every strategy on a split, and the same as tidy metric rows.

    Regional and finetuned models are evaluated only on their own region (they do not apply to
    regions they were not trained for); the other strategies on every region of the split.
    ``acquisition`` selects ``temporal`` or ``spatial`` tiles of the independent split; the
    tidy rows then carry that name as ``split``.

    Returns:
        ``(table, tidy)``: ``table`` has one row per strategy and region with the pooled
        counts and metrics; ``tidy`` is in the book's long metrics format.
    """
    label = acquisition or split
    tables, tidy = [], []
    for strategy, models in experiments.items():
        for trained in models:
            predictions = strategy_predictions(context, trained, split, acquisition)
            if predictions is None:
                continue
            evaluation = evaluate_split(context, predictions)
            tables.append(evaluation[evaluation.level == "region"].assign(
                strategy=strategy, experiment=trained.spec.name))
            tidy.append(evaluation_rows(evaluation, experiment=trained.spec.name,
                                        **model_columns(trained.spec), split=label))
    if not tables:
        raise ValueError(f"No strategy applies to any region of split {label!r}.")
    return pd.concat(tables, ignore_index=True), pd.concat(tidy, ignore_index=True)


#: Strategies whose models apply to every region (compared on unobserved images).
EVERYWHERE_STRATEGIES: tuple[str, ...] = ("global", "region_encoding", "coordinate_encoding")


def strategy_evaluations(context: Context, models: Mapping[str, Experiment], split: str,
                         acquisitions: Sequence[str | None] = (None,)) -> dict[str, pd.DataFrame]:
    """Strategy -> evaluation (with tile rows) on a split, over the given acquisitions.

    Args:
        context: The chapter context.
        models: Strategy -> its trained model.
        split: ``test`` or ``independent``.
        acquisitions: Acquisition kinds of the independent split to pool (None: all tiles).
    """
    evaluations = {}
    for strategy, model in models.items():
        parts = [strategy_predictions(context, model, split, acquisition)
                 for acquisition in acquisitions]
        frames = [evaluate_split(context, p) for p in parts if p is not None]
        if frames:
            evaluations[strategy] = pd.concat(frames, ignore_index=True)
    return evaluations


def strategy_findings(context: Context, models: Mapping[str, Experiment]) -> list[Finding]:
    """Chapter 03: region encoding against global, and the best strategy on unobserved images.

    Args:
        context: The chapter context.
        models: Strategy -> its trained model (one each; global and region_encoding needed).
    """
    everywhere = {s: models[s] for s in EVERYWHERE_STRATEGIES if s in models}
    late = evidence.unconverged(histories(everywhere.values()))
    pair = [models[s].card.name for s in ("global", "region_encoding")]
    tiles = evidence.tile_counts(strategy_evaluations(
        context, {s: models[s] for s in ("global", "region_encoding")}, "test"))
    unobserved_tiles = evidence.tile_counts(strategy_evaluations(
        context, everywhere, "independent", ("temporal", "spatial")))
    best = max(everywhere, key=lambda s: evidence.mean_of_region_ious(
        unobserved_tiles[unobserved_tiles.model == s]))
    best_tiles = unobserved_tiles[unobserved_tiles.model == best]
    best_name = models[best].card.name
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS["region_encoding_no_cost"],
              evidence.model_difference(tiles, "region_encoding", "global", seed=context.seed),
              synthetic=context.synthetic, models=pair,
              unconverged=[n for n in late if n in pair], seeds=1),
        judge(CLAIMS["best_strategy_unobserved"],
              bootstrap(best_tiles, evidence.mean_of_region_ious, seed=context.seed),
              synthetic=context.synthetic, models=[best_name],
              unconverged=[n for n in late if n == best_name]),
    ])


#: IoU spread across location inputs below which a model is said not to use its region input.
UNUSED_INPUT_SPREAD = 0.01


def region_input_control(context: Context, model: Experiment,
                         load_model: Any = None) -> pd.DataFrame:  # noqa: ANN401
    """Test-split IoU of a region-encoding model under three location inputs.

    The controlled experiment behind chapter 03's diagnosis: the tile's true region (as the
    chapter evaluates it), the *unknown* slot, and a uniform vector (1/12 in every slot). If the
    IoU hardly changes between them, the model does not use the region input, and a gap to the
    global model cannot come from what the input says.

    Returns:
        One row per input: the mean of region IoUs and each region's IoU.
    """
    slots = len(slot_vector(UNKNOWN_REGION))
    arms = {"true region": strategy_predictions(context, model, "test")}
    for name, vector in (("unknown slot", slot_vector(UNKNOWN_REGION)),
                         ("uniform 1/12", np.full(slots, 1.0 / slots))):
        arms[name] = predict_with_vector(context, model, vector, split="test",
                                         acquisition=None, load_model=load_model)
    rows = []
    for name, predictions in arms.items():
        regions = evaluate_split(context, predictions)
        regions = regions[regions.level == "region"]
        rows.append({"location input": name, "mean of region IoUs": float(regions.iou.mean()),
                     **{r.region: float(r.iou) for r in regions.itertuples()}})
    return pd.DataFrame(rows).set_index("location input")


def region_encoding_diagnosis(models: Mapping[str, Experiment], control: pd.DataFrame,
                              gap: float) -> str:
    """A generated paragraph: which cause of the region-encoding gap the evidence supports.

    Args:
        models: Strategy -> trained model (global and region_encoding).
        control: :func:`region_input_control`'s table.
        gap: Region encoding minus global, mean of region IoUs on the test split.
    """
    verdict = {s: assess(histories([models[s]])[models[s].card.name])
               for s in ("global", "region_encoding")}
    means = control["mean of region IoUs"]
    spread = float(means.max() - means.min())
    used = spread >= UNUSED_INPUT_SPREAD
    helps = float(means["true region"] - means.drop("true region").max())
    lines = [f"Region encoding − global on the test split: {gap:+.3f} (mean of region IoUs)."]
    lines.append(
        f"Across the three location inputs the region-encoding model's IoU varies by "
        f"{spread:.3f}: it {'responds to' if used else 'does not use'} its region input "
        f"(threshold {UNUSED_INPUT_SPREAD}), and the true region gives {helps:+.3f} against the "
        f"best of the other two inputs ({means.drop('true region').idxmax()})."
    )
    for strategy, result in verdict.items():
        lines.append(f"{strategy.replace('_', ' ').capitalize()}: "
                     f"{'levelled off' if result.converged else 'not levelled off'} "
                     f"({result.reason}).")
    causes = []
    if not verdict["region_encoding"].converged and verdict["global"].converged:
        causes.append("**undertraining**: the region-encoding model was still improving when "
                      "the global model had levelled off, so the comparison is not between "
                      "finished models")
    if not used or helps < UNUSED_INPUT_SPREAD:
        causes.append("**a cost of the extra branch, not of the region information**: the true "
                      "region does not help the model, so the gap cannot come from what the "
                      "input says; it may come from how the branch perturbs training (its "
                      "batch-normalised offset added to every pixel) or from the seed")
    if gap >= -UNUSED_INPUT_SPREAD:
        cause = "There is no gap to explain."
    elif causes:
        cause = "The evidence supports " + "; and ".join(causes) + "."
    else:
        cause = ("The evidence does not single out a cause: both models levelled off and the "
                 "true region helps the model; with one seed per model the gap may be the "
                 "seed's.")
    return " ".join([*lines, cause])
