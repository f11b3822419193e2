"""Each chapter's findings, built from what the chapter computed, and written for the book.

One function per chapter: it measures every claim of :mod:`glacier_mapping.claims` that the
chapter tests (:mod:`glacier_mapping.evidence`), checks the convergence of the models behind
it (:mod:`glacier_mapping.convergence`), judges it (:func:`glacier_mapping.findings.judge`) and
writes the chapter's findings to ``outputs/<profile>/findings/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.calibration import ReliabilityTable
from glacier_mapping.claims import CLAIMS
from glacier_mapping.findings import Finding, judge, write_findings
from glacier_mapping.uncertainty import Estimate, bootstrap, correlation_interval
from glacier_mapping.workflow import Context

#: Region of the "IoU drops in debris-rich areas" claim.
DEBRIS_REGION = "HMA"
#: Block size (pixels) that stands in for a tile when one scene is resampled.
SCENE_BLOCK = 64


def histories(models: Iterable[Any]) -> dict[str, pd.DataFrame]:
    """Training histories of trained models (anything with ``card`` and ``artifact``)."""
    return {m.card["name"]: pd.read_csv(m.artifact.file("history.csv")) for m in models}


def _publish(context: Context, chapter: str, findings: list[Finding]) -> list[Finding]:
    write_findings(context.output_dir, chapter, findings)
    return findings


def architecture_findings(context: Context, models: Mapping[str, Any],
                          evaluations: Mapping[str, pd.DataFrame]) -> list[Finding]:
    """Chapter 02: GlaViTU against DeepLabv3+, and the IoU drop in debris-rich HMA.

    Args:
        context: The chapter context.
        models: ``{"glavitu": TrainedModel, "deeplab": TrainedModel}``.
        evaluations: The same keys -> test-split evaluations (with tile rows).
    """
    tiles = evidence.tile_counts(evaluations)
    names = [m.card["name"] for m in models.values()]
    late = evidence.unconverged(histories(models.values()))
    glavitu = models["glavitu"].card["name"]
    synthetic = context.synthetic
    only_glavitu = tiles[tiles.model == "glavitu"]
    return _publish(context, "02_glavitu_training", [
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


#: Strategies whose models apply to every region (compared on unobserved images).
EVERYWHERE_STRATEGIES: tuple[str, ...] = ("global", "region_encoding", "coordinate_encoding")


def strategy_evaluations(context: Context, models: Mapping[str, Any], split: str,
                         acquisitions: Sequence[str | None] = (None,)) -> dict[str, pd.DataFrame]:
    """Strategy -> evaluation (with tile rows) on a split, over the given acquisitions.

    Args:
        context: The chapter context.
        models: Strategy -> its trained model.
        split: ``test`` or ``independent``.
        acquisitions: Acquisition kinds of the independent split to pool (None: all tiles).
    """
    from glacier_mapping.strategies import evaluate_split, strategy_predictions

    evaluations = {}
    for strategy, model in models.items():
        parts = [strategy_predictions(context, model, split, acquisition)
                 for acquisition in acquisitions]
        frames = [evaluate_split(context, p) for p in parts if p is not None]
        if frames:
            evaluations[strategy] = pd.concat(frames, ignore_index=True)
    return evaluations


def strategy_findings(context: Context, models: Mapping[str, Any]) -> list[Finding]:
    """Chapter 03: region encoding against global, and the best strategy on unobserved images.

    Args:
        context: The chapter context.
        models: Strategy -> its trained model (one each; global and region_encoding needed).
    """
    everywhere = {s: models[s] for s in EVERYWHERE_STRATEGIES if s in models}
    late = evidence.unconverged(histories(everywhere.values()))
    pair = [models[s].card["name"] for s in ("global", "region_encoding")]
    tiles = evidence.tile_counts(strategy_evaluations(
        context, {s: models[s] for s in ("global", "region_encoding")}, "test"))
    unobserved_tiles = evidence.tile_counts(strategy_evaluations(
        context, everywhere, "independent", ("temporal", "spatial")))
    best = max(everywhere, key=lambda s: evidence.mean_of_region_ious(
        unobserved_tiles[unobserved_tiles.model == s]))
    best_tiles = unobserved_tiles[unobserved_tiles.model == best]
    best_name = models[best].card["name"]
    return _publish(context, "03_strategy_comparison", [
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


def region_input_control(context: Context, model: Any,
                         load_model: Any = None) -> pd.DataFrame:  # noqa: ANN401
    """Test-split IoU of a region-encoding model under three location inputs.

    The controlled experiment behind chapter 03's diagnosis: the tile's true region (as the
    chapter evaluates it), the *unknown* slot, and a uniform vector (1/12 in every slot). If the
    IoU hardly changes between them, the model does not use the region input, and a gap to the
    global model cannot come from what the input says.

    Returns:
        One row per input: the mean of region IoUs and each region's IoU.
    """
    from glacier_mapping.confidence import predict_with_vector, slot_vector
    from glacier_mapping.data.schema import UNKNOWN_REGION
    from glacier_mapping.strategies import evaluate_split, strategy_predictions

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


def region_encoding_diagnosis(models: Mapping[str, Any], control: pd.DataFrame,
                              gap: float) -> str:
    """A generated paragraph: which cause of the region-encoding gap the evidence supports.

    Args:
        models: Strategy -> trained model (global and region_encoding).
        control: :func:`region_input_control`'s table.
        gap: Region encoding minus global, mean of region IoUs on the test split.
    """
    from glacier_mapping.convergence import assess

    verdict = {s: assess(histories([models[s]])[models[s].card["name"]])
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


def ablation_findings(context: Context, models: Sequence[Any],
                      per_seed: pd.DataFrame) -> list[Finding]:
    """Chapter 04: SAR in every region, thermal little; t intervals over paired seeds."""
    from glacier_mapping.ablation import BASELINE, sensor_set_name

    arms = {m.card["name"]: sensor_set_name(m.spec.sensors) for m in models}
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
    return _publish(context, "04_sar_thermal_ablation", [
        judge(CLAIMS["sar_helps_everywhere"], sar, synthetic=context.synthetic,
              models=sar_models, unconverged=sar_late, seeds=seeds),
        judge(CLAIMS["thermal_adds_little"], thermal, synthetic=context.synthetic,
              models=thermal_models, unconverged=thermal_late, seeds=seeds),
    ])


def calibration_tile_bins(context: Context, predictions: Any,
                          calibrators: Mapping[str, Any]) -> pd.DataFrame:  # noqa: ANN401
    """Per-tile reliability bins (100) of each named confidence, for a tile bootstrap of ECE.

    ``calibrators`` maps a name to a calibrator, or to None for the maximum softmax
    probability (the model's own probability of its predicted class).
    """
    from glacier_mapping.confidence import calibrated, iter_predictions, labelled_mask

    rows = []
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        correct = np.argmax(probs, axis=-1) == np.argmax(tile.labels, axis=-1)
        for name, calibrator in calibrators.items():
            conf = (probs.max(axis=-1) if calibrator is None
                    else calibrated(calibrator, probs))
            table = ReliabilityTable().update(conf, correct, mask)
            for index in np.flatnonzero(table.counts):
                rows.append({"tile": row["tile"], "region": row["region"], "calibrator": name,
                             "bin": int(index), "count": int(table.counts[index]),
                             "confidence_sum": float(table.confidence_sum[index]),
                             "correct_sum": float(table.correct_sum[index])})
    return pd.DataFrame(rows)


def calibration_findings(context: Context, model: Any, tile_bins: pd.DataFrame,
                         baseline: str, chosen: str) -> list[Finding]:  # noqa: ANN401
    """Chapter 05: the chosen calibrator's ECE against the maximum softmax probability's."""
    late = evidence.unconverged(histories([model]))
    return _publish(context, "05_confidence_calibration", [
        judge(CLAIMS["calibration_lowers_ece"],
              evidence.ece_difference(tile_bins, baseline, chosen, seed=context.seed),
              synthetic=context.synthetic, models=[model.card["name"]], unconverged=late),
    ])


def vector_tile_counts(context: Context, model: Any,
                       vectors: Mapping[str, Mapping[str, np.ndarray]],
                       load_model: Any = None) -> pd.DataFrame:  # noqa: ANN401
    """Tile counts of a region-encoding model on unseen regions, one label per location input.

    Args:
        context: The chapter context.
        model: The region-encoding model.
        vectors: Region -> input name -> 12-slot vector (chapter 06's ``region_vectors``).
        load_model: Shared model loader (see ``confidence.predict_with_vector``).
    """
    from glacier_mapping.confidence import predict_with_vector
    from glacier_mapping.strategies import evaluate_split

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


def bias_findings(context: Context, model: Any, tiles: pd.DataFrame,
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
    return _publish(context, "06_bias_optimisation", [
        judge(CLAIMS["bias_optimisation_helps"],
              evidence.model_difference(tiles, "optimised_vector", "unknown_slot",
                                        seed=context.seed),
              synthetic=context.synthetic,
              models=[model.card["name"], *(f"bias optimisation {r}" for r in runs)],
              unconverged=late),
    ])


def estimation_findings(context: Context, model: Any,
                        levels: Mapping[str, pd.DataFrame]) -> list[Finding]:  # noqa: ANN401
    """Chapter 07: correlation of estimated and true IoU per tile, region and scene."""
    late = evidence.unconverged(histories([model]))
    keys = {"tile": "iou_estimate_tiles", "region (test)": "iou_estimate_regions",
            "scene (independent)": "iou_estimate_scenes"}
    what = {"tile": "tiles", "region (test)": "regions", "scene (independent)": "scenes"}
    return _publish(context, "07_iou_estimation", [
        judge(CLAIMS[key], correlation_interval(levels[level]["iou_estimated"],
                                                levels[level]["iou"], what=what[level]),
              synthetic=context.synthetic, models=[model.card["name"]], unconverged=late)
        for level, key in keys.items() if level in levels
    ])


def deployment_findings(context: Context, model: Any, scene_iou: float,  # noqa: ANN401
                        everest: Any = None, everest_result: Any = None) -> list[Finding]:  # noqa: ANN401
    """Chapter 08: the deployed scene's IoU, and the Everest model against the threshold.

    Args:
        context: The chapter context.
        model: The deployed global model.
        scene_iou: IoU of its deployment on the independent scene.
        everest: The Everest model (None when the real scene is absent).
        everest_result: Its held-out evaluation (``EverestResult``).
    """
    late = evidence.unconverged(histories([model]))
    findings = [judge(CLAIMS["unobserved_scene_level"],
                      Estimate(scene_iou, float("nan"), float("nan"), "one scene", 1),
                      synthetic=context.synthetic, models=[model.card["name"]],
                      unconverged=late)]
    claim = CLAIMS["model_beats_threshold"]
    if everest is None or everest_result is None:
        findings.append(judge(claim, None, synthetic=False))
    else:
        blocks = pd.concat([
            evidence.block_counts(everest_result.model, everest_result.glacier, SCENE_BLOCK,
                                  label="model"),
            evidence.block_counts(everest_result.threshold, everest_result.glacier,
                                  SCENE_BLOCK, label="threshold"),
        ], ignore_index=True)
        gain = evidence.pooled_difference(blocks, "model", "threshold", seed=context.seed)
        gain = Estimate(gain.value, gain.low, gain.high,
                        gain.method.replace("tiles within regions",
                                            f"{SCENE_BLOCK} px blocks of the held-out part"),
                        gain.n)
        findings.append(judge(claim, gain,
                              synthetic=False, models=[everest.card["name"]],
                              unconverged=evidence.unconverged(histories([everest]))))
    return _publish(context, "08_scene_deployment", findings)
