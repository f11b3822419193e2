"""Chapter glue for calibrated confidence, bias optimisation and IoU estimation (chapters 05-07).

The methods live in :mod:`~glacier_mapping.calibration`, :mod:`~glacier_mapping.adaptation` and
:mod:`~glacier_mapping.iou_estimation`; this module runs them over the cached predictions of a
split (:func:`~glacier_mapping.strategies.predict_split`) and turns the results into tables,
files and figures:

- chapter 05: the three calibrators fitted on the validation split and cached as JSON
  artifacts (:func:`fit_calibrators`), reliability tables per calibrator and region in one pass
  over a split (:func:`reliability_tables`), ECE rows (:func:`ece_table`), the choice of the
  calibrator the book uses downstream (:func:`choose_calibrator`, by held-out ECE) written to
  ``outputs/<profile>/calibration/<model>.json`` (:func:`save_chosen_calibrator`; a plain
  calibrator JSON that ``glacier-mapping deploy --calibrator`` reads) and confidence maps with
  the "below 0.95" band (:func:`confidence_band`).
- chapter 06: the region-encoding model (:func:`region_encoding_model`), bias optimisation of
  the region vector on the unlabelled tiles of an unseen region (:func:`optimise_region`,
  cached, published to ``outputs/<profile>/region_vectors/<REGION>.json``) and IoU with a
  given location vector (:func:`predict_with_vector`, :func:`compare_region_vectors`).
- chapter 07: true and estimated IoU per tile (:func:`estimate_tiles`), pooled per region or
  scene (:func:`pool_estimates`), and their agreement (:func:`quality_table`).

Stands in for: the original ``confidence_calibration`` and ``bias_optimisation`` notebooks,
which work on one validation file and one scene. Breaks down where a split is small (a few
tiles per region give noisy per-region ECE and IoU) or where the calibration data do not
resemble the target (an unseen region or season).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.calibration import (
    CALIBRATORS,
    ECE_BINS,
    CalibrationData,
    Calibrator,
    ReliabilityTable,
    calibrator_from_json,
    confidence,
    expected_calibration_error,
    load_calibrator,
    reliability_diagram_data,
)
from glacier_mapping.data.schema import GLACIER_CLASS, LOCATION_SLOTS, UNKNOWN_REGION
from glacier_mapping.data.tiles import Tile, read_tile
from glacier_mapping.evaluation import COUNT_COLUMNS, OVERALL, confusion_counts
from glacier_mapping.iou_estimation import estimate_iou, estimation_quality, expected_counts
from glacier_mapping.parallel import run_groups, uses_workers
from glacier_mapping.store import Artifact, atomic_write_json
from glacier_mapping.strategies import (
    TILE_WINDOWS_PER_CALL,
    TrainedModel,
    evaluate_split,
    train_experiment,
    training_regions,
)
from glacier_mapping.workflow import Context

#: Label of raw (entropy) confidence in tables: no calibrator.
UNCALIBRATED = "uncalibrated"
#: Calibrators in the book's order: the original first.
CALIBRATOR_KINDS: tuple[str, ...] = ("kernel_ridge", "isotonic", "temperature")
#: Threshold of the "95 % confidence band" of the original demo.
BAND_THRESHOLD = 0.95
#: The three location inputs compared in chapter 06 (``experiment`` of its metric rows).
VECTOR_EXPERIMENTS: dict[str, str] = {
    "unknown_slot": "unknown slot",
    "optimised_vector": "optimised vector",
    "true_slot": "true region's slot (untrained)",
}


# --------------------------------------------------------------------------------------------
# Reading predictions
# --------------------------------------------------------------------------------------------

def two_class(glacier: np.ndarray) -> np.ndarray:
    """Softmax pair ``(..., 2)`` (background, glacier) from glacier probabilities, float32."""
    glacier = np.asarray(glacier, dtype=np.float32)
    return np.stack([1.0 - glacier, glacier], axis=-1)


def labelled_mask(tile: Tile) -> np.ndarray:
    """Pixels that count: unpadded and with a definite label (not both one-hot channels equal)."""
    if tile.labels is None:
        raise ValueError(f"Tile {tile.name} has no labels ('outlines'); it cannot be scored.")
    return tile.valid & (tile.labels[..., 0] != tile.labels[..., 1])


def iter_predictions(
    context: Context, predictions: Artifact, sensors: Sequence[str] = ()
) -> Iterator[tuple[dict[str, Any], Tile, np.ndarray]]:
    """Each tile of a predictions artifact: its ``tiles.csv`` row, the tile and ``(H, W, 2)``.

    Args:
        context: The chapter context.
        predictions: An artifact with ``probs.npz`` and ``tiles.csv`` (``predict_split`` or
            :func:`predict_with_vector`).
        sensors: Feature groups to read besides the labels (none by default).
    """
    meta = context.store.metadata(predictions)
    path = context.benchmark.split_path(meta["params"]["split"])
    rows = pd.read_csv(predictions.file("tiles.csv"), keep_default_na=False)
    with np.load(predictions.file("probs.npz")) as probs:
        for row in rows.to_dict("records"):
            tile = read_tile(path, row["tile"], sensors=list(sensors))
            yield row, tile, two_class(probs[row["tile"]])


# --------------------------------------------------------------------------------------------
# Chapter 05: calibration
# --------------------------------------------------------------------------------------------

def calibration_data(
    context: Context, predictions: Artifact, max_pixels: int = 200_000, seed: int = 0
) -> CalibrationData:
    """Reliability table and pixel sample of a split's predictions (labelled pixels only)."""
    data = CalibrationData(max_pixels=max_pixels, seed=seed)
    for _, tile, probs in iter_predictions(context, predictions):
        data.update(probs, np.argmax(tile.labels, axis=-1), labelled_mask(tile))
    return data


def fit_calibrators(
    context: Context, predictions: Artifact, max_pixels: int = 200_000, seed: int = 0
) -> dict[str, Calibrator]:
    """The three calibrators fitted on a (validation) predictions artifact, cached as JSON.

    The artifact ``calibrators/<key>`` holds ``kernel_ridge.json``, ``isotonic.json``,
    ``temperature.json`` and ``reliability_table.json`` (the 100-bin table they were fitted
    on); it is keyed by the predictions, so a retrained model refits them.

    Returns:
        ``{kind: calibrator}`` in the order of :data:`CALIBRATOR_KINDS`.
    """
    def build(directory: Path) -> dict[str, Any]:
        data = calibration_data(context, predictions, max_pixels, seed)
        atomic_write_json(directory / "reliability_table.json", data.table.to_json())
        for kind in CALIBRATOR_KINDS:
            CALIBRATORS[kind]().fit(data).save(directory / f"{kind}.json")
        return {"pixels": data.table.total}

    artifact = context.store.get_or_create(
        "calibrators", {"max_pixels": max_pixels, "seed": seed, "kinds": list(CALIBRATOR_KINDS)},
        build, inputs=[predictions],
    )
    return {kind: load_calibrator(artifact.file(f"{kind}.json")) for kind in CALIBRATOR_KINDS}


def describe_calibrator(calibrator: Calibrator) -> str:
    """One line on a fitted calibrator's parameters, for tables."""
    data = calibrator.to_json()
    if calibrator.kind == "kernel_ridge":
        return (f"{len(data['support'])} support points (incl. 2 anchors), "
                f"Laplacian gamma {data['gamma']:g}")
    if calibrator.kind == "isotonic":
        return f"step function with {len(data['x_thresholds'])} thresholds"
    if calibrator.kind == "temperature":
        return f"temperature T = {data['temperature']:.3f}"
    return calibrator.kind


def calibrated(calibrator: Calibrator | None, probs: np.ndarray) -> np.ndarray:
    """Calibrated confidence of ``(..., 2)`` probabilities; raw confidence for ``None``."""
    return confidence(probs) if calibrator is None else calibrator.calibrated_confidence(probs)


def reliability_tables(
    context: Context,
    predictions: Artifact,
    calibrators: Mapping[str, Calibrator | None],
    n_bins: int = ECE_BINS,
) -> dict[tuple[str, str], ReliabilityTable]:
    """Reliability tables of every calibrator, per region and pooled, in one pass over a split.

    Args:
        context: The chapter context.
        predictions: Predictions of the split.
        calibrators: Name -> calibrator (``None`` for raw entropy confidence).
        n_bins: Bins of each table.

    Returns:
        ``{(calibrator name, region): table}``; region ``ALL`` pools every tile.
    """
    tables: dict[tuple[str, str], ReliabilityTable] = {}
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        correct = np.argmax(probs, axis=-1) == np.argmax(tile.labels, axis=-1)
        for name, calibrator in calibrators.items():
            conf = calibrated(calibrator, probs)
            for region in (str(row["region"]), OVERALL):
                table = tables.setdefault((name, region), ReliabilityTable(n_bins))
                table.update(conf, correct, mask)
    return tables


def ece_table(tables: Mapping[tuple[str, str], ReliabilityTable], split: str) -> pd.DataFrame:
    """ECE (100 bins) and pixel count per calibrator and region: one row each."""
    rows = [
        {"calibrator": name, "split": split, "region": region,
         "ece": expected_calibration_error(table), "pixels": table.total}
        for (name, region), table in tables.items() if table.total
    ]
    return pd.DataFrame(rows, columns=["calibrator", "split", "region", "ece", "pixels"])


def choose_calibrator(
    ece: pd.DataFrame, split: str = "test", region: str = OVERALL,
    candidates: Sequence[str] = CALIBRATOR_KINDS,
) -> str:
    """The candidate with the lowest ECE on ``split`` pooled over ``region`` (first on ties).

    The default criterion is held-out data: every calibrator is fitted on the validation
    split, where isotonic regression's ECE is small by construction.

    Raises:
        ValueError: if no candidate has an ECE for that split and region.
    """
    rows = ece[(ece["split"] == split) & (ece["region"] == region)
               & ece["calibrator"].isin(candidates)]
    if rows.empty:
        raise ValueError(
            f"No ECE of {list(candidates)} on split {split!r}, region {region!r}; compute it "
            "with ece_table(reliability_tables(...), split) first."
        )
    order = {name: index for index, name in enumerate(candidates)}
    best = rows.assign(order=rows["calibrator"].map(order)).sort_values(["ece", "order"])
    return str(best["calibrator"].iloc[0])


def calibration_summary(ece: pd.DataFrame, chosen: str, split: str = "test") -> pd.DataFrame:
    """Pooled ECE of raw and chosen confidence on ``split``, and regions the choice makes worse.

    Returns:
        One row per line: ``what`` and ``value`` (numbers, or region codes joined by commas).
    """
    rows = ece[ece["split"] == split].pivot_table(index="region", columns="calibrator",
                                                  values="ece")
    worse = rows.index[(rows[chosen] > rows[UNCALIBRATED]) & (rows.index != OVERALL)]
    return pd.DataFrame([
        {"what": f"pooled {split} ECE, uncalibrated",
         "value": f"{rows.at[OVERALL, UNCALIBRATED]:.4f}"},
        {"what": f"pooled {split} ECE, {chosen} (chosen)",
         "value": f"{rows.at[OVERALL, chosen]:.4f}"},
        {"what": f"regions where {chosen} is worse than uncalibrated",
         "value": ", ".join(worse) or "none"},
    ]).set_index("what")


def chosen_calibrator_path(context: Context, model_name: str) -> Path:
    """``outputs/<profile>/calibration/<model_name>.json``: the calibrator the book uses."""
    return context.output_dir / "calibration" / f"{model_name}.json"


def save_chosen_calibrator(
    context: Context, model_name: str, calibrators: Mapping[str, Calibrator], chosen: str,
    ece: pd.DataFrame,
) -> Path:
    """Write every calibrator and the chosen one (atomically) under ``calibration/``.

    ``calibration/<model_name>/<kind>.json`` holds each calibrator and
    ``calibration/<model_name>.json`` the chosen one, with a ``selection`` record (criterion
    and ECEs) beside its parameters; both load with :func:`~glacier_mapping.calibration.
    load_calibrator` and ``glacier-mapping deploy --calibrator``.

    Returns:
        Path of the chosen calibrator's JSON.
    """
    folder = context.output_dir / "calibration" / model_name
    for kind, calibrator in calibrators.items():
        calibrator.save(folder / f"{kind}.json")
    pooled = ece[ece["region"] == OVERALL]
    selection = {
        "model": model_name,
        "criterion": "lowest pooled ECE (100 bins) on the test split; fitted on validation",
        "ece": {f"{row.calibrator}/{row.split}": round(float(row.ece), 6)
                for row in pooled.itertuples()},
    }
    return atomic_write_json(chosen_calibrator_path(context, model_name),
                             {**calibrators[chosen].to_json(), "selection": selection})


def load_chosen_calibrator(context: Context, model_name: str) -> tuple[Calibrator, dict[str, Any]]:
    """The calibrator chosen by chapter 05 and its selection record.

    Raises:
        FileNotFoundError: if chapter 05 has not run for this profile.
    """
    import json

    path = chosen_calibrator_path(context, model_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"No calibrator at {path}: run chapter 05 (05_confidence_calibration) for profile "
            f"{context.profile.name!r} first."
        )
    data = json.loads(path.read_text())
    return calibrator_from_json(data), data.get("selection", {})


def diagram_frame(
    tables: Mapping[tuple[str, str], ReliabilityTable], names: Sequence[str],
    region: str = OVERALL, n_bins: int = 10,
) -> pd.DataFrame:
    """Reliability-diagram bins (10 by default) of several calibrators, with a ``calibrator``."""
    frames = [reliability_diagram_data(tables[(name, region)], n_bins).assign(calibrator=name)
              for name in names if (name, region) in tables]
    return pd.concat(frames, ignore_index=True)


def reliability_plot(frame: pd.DataFrame, title: str) -> Any:
    """One reliability diagram: bin accuracy against mean confidence, with the identity line."""
    import holoviews as hv

    bins = frame.dropna(subset=["accuracy"])
    identity = hv.Curve([(0, 0), (1, 1)], "mean_confidence", "accuracy").opts(
        color="grey", line_dash="dashed")
    points = hv.Curve(bins, "mean_confidence", ["accuracy", "count"]).opts(tools=["hover"])
    dots = hv.Scatter(bins, "mean_confidence", ["accuracy", "count"]).opts(size=6)
    return (identity * points * dots).opts(
        title=title, xlabel="mean calibrated confidence (per bin)",
        ylabel="pixel accuracy (per bin)", xlim=(0, 1), ylim=(0, 1.02), width=330, height=300)


def save_reliability_png(frame: pd.DataFrame, path: str | Path, suptitle: str) -> Path:
    """Static PNG of one reliability diagram per calibrator (``diagram_frame`` output)."""
    names = list(dict.fromkeys(frame["calibrator"]))

    def draw(ax: Any, name: str) -> None:  # noqa: ANN401
        bins = frame[(frame["calibrator"] == name)].dropna(subset=["accuracy"])
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.plot(bins["mean_confidence"], bins["accuracy"], "o-")
        ax.set(title=name, xlabel="mean confidence", xlim=(0, 1), ylim=(0, 1.02))

    return _save_panels(names, draw, path, suptitle, "pixel accuracy")


def _save_panels(names: Sequence[str], draw: Any, path: str | Path, suptitle: str,  # noqa: ANN401
                 ylabel: str, panel_width: float = 3.2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(panel_width * len(names), 3.4),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        draw(ax, name)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(suptitle, fontsize=10)
    from glacier_mapping.plots import save_figure

    return save_figure(fig, path)


def confidence_band(
    glacier: np.ndarray, calibrator: Calibrator | None, threshold: float = BAND_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated confidence of a glacier-probability map and its "below threshold" band.

    Returns:
        ``(confidence, band)``: float ``(H, W)`` and boolean ``(H, W)`` (True below threshold).
    """
    conf = calibrated(calibrator, two_class(glacier))
    return conf, conf < threshold


def band_rgb(conf: np.ndarray, band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` for static figures: confidence in grey, the band tinted cyan.

    Invalid pixels are white; band pixels are half grey, half cyan (0, 0.9, 1).
    """
    grey = np.repeat(np.clip(np.asarray(conf, dtype=np.float32), 0, 1)[..., None], 3, axis=-1)
    tinted = 0.5 * grey + 0.5 * np.array([0.0, 0.9, 1.0], dtype=np.float32)
    rgb = np.where(np.asarray(band, bool)[..., None], tinted, grey)
    return np.where(np.asarray(valid, bool)[..., None], rgb, 1.0).astype(np.float32)


def band_summary(
    band: np.ndarray, predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray
) -> dict[str, float]:
    """Share of valid pixels inside the band, share of wrong pixels it covers, accuracy outside.

    Shares with an empty denominator (no error, no pixel outside the band) are NaN.
    """
    band, valid = np.asarray(band, bool), np.asarray(valid, bool)
    wrong = (np.asarray(predicted, bool) != np.asarray(truth, bool)) & valid
    inside = band & valid
    outside = valid & ~band
    return {
        "band_share": float(inside.sum() / max(valid.sum(), 1)),
        "errors_in_band": float((wrong & band).sum() / wrong.sum()) if wrong.any() else math.nan,
        "accuracy_outside_band": (float(1.0 - (wrong & outside).sum() / outside.sum())
                                  if outside.any() else math.nan),
    }


def metric_rows(
    frame: pd.DataFrame, trained: TrainedModel, metric_columns: Mapping[str, str],  # noqa: ANN401
    experiment: str | None = None,
) -> pd.DataFrame:
    """Tidy metric rows (``write_metrics`` format) from a table with ``split`` and ``region``.

    Args:
        frame: One row per measurement; ``experiment`` is taken from its ``experiment`` column
            when present, else from the argument.
        trained: The model the numbers belong to (a ``TrainedModel``).
        metric_columns: Column of ``frame`` -> metric name.
        experiment: Experiment name when ``frame`` has no ``experiment`` column.
    """
    spec = trained.spec
    base = {"model": spec.architecture, "preset": spec.preset, "strategy": spec.strategy,
            "sensors": "+".join(spec.sensors), "seed": spec.seed}
    rows = []
    for record in frame.to_dict("records"):
        for column, metric in metric_columns.items():
            rows.append({**base, "experiment": record.get("experiment", experiment),
                         "split": record["split"], "region": record["region"],
                         "metric": metric, "value": float(record[column])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Chapter 06: bias optimisation
# --------------------------------------------------------------------------------------------

def region_encoding_model(context: Context) -> TrainedModel:
    """The region-encoding GlaViTU of chapter 03 (trained once, cached): a ``TrainedModel``."""
    from glacier_mapping.strategies import global_experiment, strategy_experiments

    specs = strategy_experiments(
        global_experiment(context), regions=context.profile.experiments["strategy_regions"],
        finetune_epochs=context.profile.training["finetune_epochs"])
    return train_experiment(context, specs["region_encoding"][0])


def split_regions(context: Context, split: str, acquisition: str | None = None) -> list[str]:
    """Regions present in a split (only tiles of one ``acquisition`` if given), sorted."""
    import h5py

    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    with h5py.File(context.benchmark.split_path(split), "r") as handle:
        return sorted({text(g.attrs["region"]) for g in handle.values()
                       if acquisition is None or text(g.attrs.get("acquisition", ""))
                       == acquisition})


def unseen_regions(
    context: Context, trained: TrainedModel, acquisition: str = "spatial"
) -> list[str]:
    """Regions of the independent split (``acquisition`` tiles) the model never trained on."""
    known = training_regions(context, trained.spec)
    return [r for r in split_regions(context, "independent", acquisition) if r not in known]


def region_tiles(
    context: Context, region: str, sensors: Sequence[str], split: str = "independent",
    acquisition: str | None = "spatial",
) -> list[Tile]:
    """The tiles of one region (and acquisition kind) of a split, features of ``sensors``."""
    from glacier_mapping.data.tiles import list_tiles

    path = context.benchmark.split_path(split)
    tiles = [read_tile(path, name, sensors=list(sensors))
             for name in list_tiles(path, regions=[region])]
    tiles = [t for t in tiles if acquisition is None
             or str(t.attrs.get("acquisition", "")) == acquisition]
    if not tiles:
        raise ValueError(f"No {acquisition or ''} tiles of region {region!r} in {path}.")
    return tiles


def stack_tiles(tiles: Sequence[Tile]) -> dict[str, np.ndarray]:
    """Unlabelled features of several tiles stacked top to bottom (cropped to a common width).

    Each tile is cropped to its unpadded extent, then to the narrowest tile's width. The
    result is a stand-in "scene" for :func:`~glacier_mapping.adaptation.optimise_region_vector`
    (labels are not used); random patches may straddle the seam between two tiles.

    Raises:
        ValueError: for no tiles or tiles with different sensors.
    """
    if not tiles:
        raise ValueError("stack_tiles needs at least one tile.")
    sensors = set(tiles[0].features)
    if any(set(t.features) != sensors for t in tiles):
        raise ValueError("All tiles must carry the same sensors to be stacked.")
    crops = []
    for tile in tiles:
        (top, left), (height, width) = tile.padding, tile.original_shape
        crops.append({s: a[top:top + height, left:left + width] for s, a in tile.features.items()})
    width = min(next(iter(c.values())).shape[1] for c in crops)
    return {s: np.concatenate([c[s][:, :width] for c in crops], axis=0) for s in sorted(sensors)}


def optimise_region(
    context: Context, trained: TrainedModel, region: str, max_epochs: int,
    acquisition: str = "spatial", seed: int | None = None,
    load_model: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Bias-optimise the region vector on one region's unlabelled tiles (cached artifact).

    The original settings (Adam lr 1e-4, batch 8, about H x W / patch^2 / 8 batches per epoch,
    stop when the squared change stays below 1e-8 for 5 epochs) with at most ``max_epochs``.
    The vector is published to ``outputs/<profile>/region_vectors/<REGION>.json`` (the JSON of
    :func:`~glacier_mapping.adaptation.save_region_vector`, readable by deploy).

    Args:
        context: The chapter context.
        trained: A region-encoding model.
        region: The unseen region.
        max_epochs: Upper bound on epochs.
        acquisition: Tiles of this acquisition kind are the region's "scene".
        seed: Seed of the patch positions (the run's seed by default).
        load_model: Returns the loaded Keras model (default ``trained.load``).

    Returns:
        ``{"vector", "epochs_run", "converged", "entropy_history", "path", "seconds"}``.
    """
    import json
    import shutil
    import time

    seed = context.seed if seed is None else seed
    spec = trained.spec
    params = _region_vector_params(region, acquisition, max_epochs, seed)
    if uses_workers(context) and not context.store.exists("region_vector", params,
                                                          [trained.artifact]):
        # Optimised in a worker, like every gradient task of this profile: its result must
        # not depend on where it ran (see glacier_mapping.parallel); then read from the store.
        run_groups(context, _optimise_region_task,
                   [[(trained, region, max_epochs, acquisition, seed)]])

    def build(directory: Path) -> dict[str, Any]:
        from glacier_mapping.adaptation import optimise_region_vector, save_region_vector

        features = stack_tiles(region_tiles(context, region, spec.sensors,
                                            acquisition=acquisition))
        start = time.perf_counter()
        result = optimise_region_vector((load_model or trained.load)(), features, spec.patch_size,
                                        batch_size=spec.batch_size, max_epochs=max_epochs,
                                        seed=seed, progress=False)
        seconds = time.perf_counter() - start
        save_region_vector(result, directory / "region_vector.json", metadata={
            "region": region, "acquisition": acquisition, "model": spec.name,
            "scene_shape": list(next(iter(features.values())).shape[:2]),
            "seconds": round(seconds, 1)})
        return {"epochs_run": result.epochs_run}

    artifact = context.store.get_or_create("region_vector", params, build,
                                           inputs=[trained.artifact])
    target = context.output_dir / "region_vectors" / f"{region}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(artifact.file("region_vector.json"), tmp)
    tmp.replace(target)
    data = json.loads(target.read_text())
    return {"vector": np.asarray(data["vector"], dtype=np.float64),
            "epochs_run": data["optimisation"]["epochs_run"],
            "converged": data["optimisation"]["converged"],
            "entropy_history": data["optimisation"]["entropy_history"],
            "seconds": data["metadata"]["seconds"], "path": target}


def optimise_regions(
    context: Context, trained: TrainedModel, regions: Sequence[str], max_epochs: int,
    acquisition: str = "spatial", load_model: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`optimise_region` for several regions, side by side in worker processes.

    Regions are independent, so they run in parallel when the profile allows it
    (``training.parallel_experiments``, :mod:`glacier_mapping.parallel`); the results are then
    read from the store, exactly as one after another.
    """
    missing = [region for region in regions if not context.store.exists(
        "region_vector", _region_vector_params(region, acquisition, max_epochs, context.seed),
        [trained.artifact])]
    run_groups(context, _optimise_region_task,
               [[(trained, region, max_epochs, acquisition, context.seed)] for region in missing])
    return {region: optimise_region(context, trained, region, max_epochs, acquisition,
                                    load_model=load_model)
            for region in regions}


def _region_vector_params(
    region: str, acquisition: str, max_epochs: int, seed: int
) -> dict[str, Any]:
    """What the key of a region-vector artifact is made of (besides the model)."""
    return {"region": region, "acquisition": acquisition, "max_epochs": max_epochs, "seed": seed}


def _optimise_region_task(
    context: Context, item: tuple[TrainedModel, str, int, str, int]
) -> None:
    """Worker task of :func:`optimise_regions` and :func:`optimise_region`."""
    trained, region, max_epochs, acquisition, seed = item
    optimise_region(context, trained, region, max_epochs, acquisition, seed)


def model_loader(trained: TrainedModel) -> Callable[[], Any]:
    """A loader that loads the model at most once (share it across the calls of a chapter)."""
    return functools.cache(trained.load)


def slot_vector(code: str) -> np.ndarray:
    """One-hot location vector of a slot (a region code or ``UNKNOWN``), float64."""
    from glacier_mapping.data.patches import region_vector

    return region_vector(code).astype(np.float64)


def predict_with_vector(
    context: Context, trained: TrainedModel, vector: np.ndarray, split: str = "independent",
    regions: Sequence[str] | None = None, acquisition: str | None = "spatial",
    load_model: Callable[[], Any] | None = None,
) -> Artifact:
    """Predictions of a region-encoding model with one fixed location vector for every tile.

    Same files as :func:`~glacier_mapping.strategies.predict_split` (``probs.npz``,
    ``tiles.csv``), so :func:`~glacier_mapping.strategies.evaluate_split` scores it; cached by
    the vector (rounded to 1e-9).

    Args:
        context: The chapter context.
        trained: A region-encoding model.
        vector: The 12-slot location vector given to every tile.
        split: Split to predict.
        regions: Only tiles of these regions.
        acquisition: Only tiles of this acquisition kind (independent split).
        load_model: Returns the loaded Keras model (default ``trained.load``); pass one cached
            loader to share a model, and its compiled inference function, across calls.
    """
    from glacier_mapping.data.tiles import iter_tiles
    from glacier_mapping.inference import predict_array

    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (len(LOCATION_SLOTS),):
        raise ValueError(f"vector must have {len(LOCATION_SLOTS)} entries; got {vector.shape}.")
    spec = trained.spec
    path = context.benchmark.split_path(split)
    params = {"split": split, "regions": list(regions) if regions else None,
              "acquisition": acquisition, "vector": [round(float(v), 9) for v in vector]}

    def build(directory: Path) -> dict[str, Any]:
        model = (load_model or trained.load)()
        probabilities, rows = {}, []
        for tile in iter_tiles(path, sensors=spec.sensors, regions=regions):
            kind = str(tile.attrs.get("acquisition", ""))
            if acquisition is not None and kind != acquisition:
                continue
            probs = predict_array(model, tile.features, spec.patch_size,
                                  batch_size=TILE_WINDOWS_PER_CALL,
                                  location=vector.astype(np.float32))
            probabilities[tile.name] = probs[..., GLACIER_CLASS].astype(np.float16)
            rows.append({"tile": tile.name, "region": tile.region, "subregion": tile.subregion,
                         "acquisition": kind, "date": str(tile.attrs.get("date", ""))})
        if not rows:
            raise ValueError(f"No tiles of split {split!r} match regions={regions}, "
                             f"acquisition={acquisition} in {path}.")
        np.savez_compressed(directory / "probs.npz", **probabilities)
        pd.DataFrame(rows).to_csv(directory / "tiles.csv", index=False)
        return {"tiles": len(rows)}

    return context.store.get_or_create("vector_predictions", params, build,
                                       inputs=[trained.artifact])


def compare_region_vectors(
    context: Context, trained: TrainedModel, region: str, vectors: Mapping[str, np.ndarray],
    acquisition: str = "spatial", load_model: Callable[[], Any] | None = None,
) -> pd.DataFrame:
    """Pooled IoU (and counts) of one region's tiles under each named location vector.

    ``load_model`` (default: a cached ``trained.load``) is shared by the predictions.
    """
    rows = []
    load_model = load_model or functools.cache(trained.load)
    for name, vector in vectors.items():
        predictions = predict_with_vector(context, trained, vector, regions=[region],
                                          acquisition=acquisition, load_model=load_model)
        evaluation = evaluate_split(context, predictions)
        pooled = evaluation[evaluation["level"] == "region"].iloc[0]
        rows.append({"region": region, "experiment": name, "split": acquisition,
                     "iou": float(pooled["iou"]),
                     **{key: int(pooled[key]) for key in COUNT_COLUMNS}})
    return pd.DataFrame(rows)


def region_vectors(region: str, optimised: np.ndarray) -> dict[str, np.ndarray]:
    """The three location inputs of chapter 06 for a region (keys of VECTOR_EXPERIMENTS)."""
    return {"unknown_slot": slot_vector(UNKNOWN_REGION), "optimised_vector": optimised,
            "true_slot": slot_vector(region)}


def vector_frame(vectors: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Optimised vectors per region as a long table: ``region, slot, weight, change``.

    ``change`` is the weight minus the uniform start ``1 / 12``.
    """
    start = 1.0 / len(LOCATION_SLOTS)
    return pd.DataFrame([{"region": region, "slot": slot, "weight": float(weight),
                          "change": float(weight) - start}
                         for region, vector in vectors.items()
                         for slot, weight in zip(LOCATION_SLOTS, vector, strict=True)])


def save_vector_png(vectors: pd.DataFrame, path: str | Path, suptitle: str) -> Path:
    """Static PNG of optimised region vectors as the change of each slot's weight from 1/12.

    One panel per region of a :func:`vector_frame` table (the weights themselves all look like
    1/12 when the vector barely moved).
    """
    def draw(ax: Any, region: str) -> None:  # noqa: ANN401
        data = vectors[vectors["region"] == region]
        ax.bar(data["slot"], data["change"])
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set(title=region, xlabel="slot")
        ax.tick_params(axis="x", labelrotation=90)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    return _save_panels(list(dict.fromkeys(vectors["region"])), draw, path, suptitle,
                        "weight − 1/12", panel_width=5.0)


# --------------------------------------------------------------------------------------------
# Chapter 07: IoU estimation
# --------------------------------------------------------------------------------------------

def estimate_tiles(
    context: Context, predictions: Artifact, calibrator: Calibrator, split: str
) -> pd.DataFrame:
    """True and expected confusion counts, true and estimated IoU, per tile.

    Columns: ``split, tile, region, subregion, acquisition, date, scene`` (``<REGION>_<date>``,
    one acquisition), ``tp, fp, fn, tn``, ``e_tp, e_fp, e_fn, e_tn, n`` (expected counts from
    calibrated confidence), ``iou`` and ``iou_estimated``.
    """
    from glacier_mapping.evaluation import metrics_from_counts

    rows = []
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        predicted = np.argmax(probs, axis=-1)
        truth = confusion_counts(predicted, np.argmax(tile.labels, axis=-1), mask)
        expected = expected_counts(predicted, calibrator.calibrated_confidence(probs), mask)
        rows.append({
            "split": split, **{k: row[k] for k in ("tile", "region", "subregion")},
            "acquisition": row.get("acquisition", ""), "date": row.get("date", ""),
            "scene": f"{row['region']}_{row.get('date', '')}", **truth,
            **{f"e_{k}": v for k, v in expected.items()},
            "iou": metrics_from_counts(truth)["iou"], "iou_estimated": estimate_iou(expected),
        })
    return pd.DataFrame(rows)


def pool_estimates(tiles: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Pool true and expected counts over groups of tiles; IoU and estimate of each group."""
    sums = [*COUNT_COLUMNS, "e_tp", "e_fp", "e_fn", "e_tn", "e_n"]
    pooled = tiles.groupby(list(by), sort=True)[sums].sum().reset_index()
    pooled["tiles"] = tiles.groupby(list(by), sort=True).size().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled["iou"] = pooled["tp"] / (pooled["tp"] + pooled["fp"] + pooled["fn"])
        pooled["iou_estimated"] = pooled["e_tp"] / (pooled["e_tp"] + pooled["e_fp"]
                                                    + pooled["e_fn"])
    pooled["error"] = pooled["iou_estimated"] - pooled["iou"]
    return pooled


def quality_table(levels: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Pearson r, MAE, bias and n of the estimate at each level (tile, region, scene)."""
    return pd.DataFrame([
        {"level": level, **estimation_quality(frame["iou"].to_numpy(),
                                              frame["iou_estimated"].to_numpy())}
        for level, frame in levels.items()
    ]).set_index("level")


def largest_errors(frame: pd.DataFrame, columns: Sequence[str], count: int = 5) -> pd.DataFrame:
    """The ``count`` rows with the largest absolute estimation error (NaN IoUs dropped)."""
    data = frame.assign(error=frame["iou_estimated"] - frame["iou"]).dropna(subset=["error"])
    order = data["error"].abs().sort_values(ascending=False).index
    return data.loc[order, [*columns, "iou", "iou_estimated", "error"]].head(count)


def estimate_scatter(frame: pd.DataFrame, label: str, title: str) -> Any:  # noqa: ANN401
    """Estimated against true IoU (one point per row, hover shows ``label``) and y = x."""
    import holoviews as hv

    data = frame.dropna(subset=["iou", "iou_estimated"])
    identity = hv.Curve([(0, 0), (1, 1)], "iou", "iou_estimated").opts(
        color="grey", line_dash="dashed")
    points = hv.Scatter(data, "iou", ["iou_estimated", label]).opts(
        size=7, alpha=0.7, tools=["hover"])
    return (identity * points).opts(title=title, xlabel="true glacier IoU",
                                     ylabel="estimated glacier IoU", xlim=(0, 1), ylim=(0, 1),
                                     width=330, height=300)


def save_scatter_png(levels: Mapping[str, pd.DataFrame], path: str | Path, suptitle: str) -> Path:
    """Static PNG of estimated against true IoU, one panel per level."""
    def draw(ax: Any, level: str) -> None:  # noqa: ANN401
        data = levels[level].dropna(subset=["iou", "iou_estimated"])
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.scatter(data["iou"], data["iou_estimated"], s=18, alpha=0.7)
        ax.set(title=level, xlabel="true glacier IoU", xlim=(0, 1), ylim=(0, 1))

    return _save_panels(list(levels), draw, path, suptitle, "estimated glacier IoU")


def estimation_sources(context: Context, trained: TrainedModel) -> dict[str, Artifact]:
    """Cached predictions of the test split and of each independent acquisition kind.

    Keys are ``test``, ``temporal`` and ``spatial`` (those present); the independent
    predictions use the same parameters as chapter 03, so its cache is reused.
    """
    from glacier_mapping.strategies import predict_split

    sources = {"test": predict_split(context, trained, "test")}
    if context.benchmark.independent is not None:
        for acquisition in ("temporal", "spatial"):
            regions = split_regions(context, "independent", acquisition)
            if regions:
                sources[acquisition] = predict_split(context, trained, "independent",
                                                     regions=regions, acquisition=acquisition)
    return sources


def estimation_levels(tiles: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tiles, test regions and independent scenes (``estimate_tiles`` rows pooled)."""
    test = tiles[tiles["split"] == "test"]
    independent = tiles[tiles["split"] != "test"]
    levels = {"tile": tiles}
    if not test.empty:
        levels["region (test)"] = pool_estimates(test, ["split", "region"])
    if not independent.empty:
        levels["scene (independent)"] = pool_estimates(independent, ["split", "region", "scene"])
    return levels


def regional_diagnosis(
    context: Context, sources: Mapping[str, Artifact], calibrator: Calibrator,
    tiles: pd.DataFrame,
) -> pd.DataFrame:
    """Per split and region: true and estimated IoU, their error and the calibrator's ECE.

    Explains failures of the estimate: where calibration does not hold (high ECE), expected
    counts are biased. ECE is computed with 100 bins over the region's tiles of that split.
    """
    ece = pd.concat([ece_table(reliability_tables(context, predictions, {"chosen": calibrator}),
                               split) for split, predictions in sources.items()],
                    ignore_index=True)
    ece = ece[ece["region"] != OVERALL][["split", "region", "ece"]]
    pooled = pool_estimates(tiles, ["split", "region"])
    table = pooled[["split", "region", "tiles", "iou", "iou_estimated", "error"]].merge(
        ece, on=["split", "region"], how="left")
    return table.sort_values("error", key=np.abs, ascending=False).reset_index(drop=True)


def estimation_metric_rows(
    levels: Mapping[str, pd.DataFrame], quality: pd.DataFrame, trained: TrainedModel
) -> pd.DataFrame:
    """Tidy rows: ``iou`` and ``iou_estimated`` per tile, region and scene, plus quality.

    ``experiment`` names the unit (``tile <name>``, ``region``, ``scene <name>``); quality rows
    (``iou_estimate_pearson_r``, ``_mae``, ``_bias``, ``_n``) have region ``ALL``, split
    ``all`` and the level as experiment.
    """
    units = {"tile": lambda f: "tile " + f["tile"], "region (test)": lambda f: "region",
             "scene (independent)": lambda f: "scene " + f["scene"]}
    frames = [metric_rows(frame.assign(experiment=units[level](frame)), trained,
                          {"iou": "iou", "iou_estimated": "iou_estimated"})
              for level, frame in levels.items() if level in units]
    summary = quality.reset_index().assign(split="all", region=OVERALL)
    summary["experiment"] = summary["level"]
    frames.append(metric_rows(summary, trained, {
        key: f"iou_estimate_{key}" for key in ("pearson_r", "mae", "bias", "n")}))
    return pd.concat(frames, ignore_index=True)
