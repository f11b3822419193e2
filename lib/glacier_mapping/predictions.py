"""Cached predictions of a benchmark split, and reading them back for scoring.

:func:`predict_split` runs a trained experiment over every tile of a split (optionally only some
regions or one acquisition kind) and keeps the glacier probabilities as an artifact
(``probs.npz`` + ``tiles.csv``); :func:`predict_with_vector` does the same with one fixed
location vector for every tile (region-encoding models). :func:`evaluate_split` turns either
into confusion counts per tile, subregion and region; :func:`iter_predictions` hands each tile
with its probabilities to the calibration and IoU-estimation code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.data.schema import GLACIER_CLASS, LOCATION_SLOTS, UNKNOWN_REGION
from glacier_mapping.data.splits import split_regions
from glacier_mapping.data.tiles import Tile, iter_tiles, read_tile
from glacier_mapping.evaluation import confusion_counts, evaluate_predictions
from glacier_mapping.experiments.runner import Experiment, prediction_model
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.lazy import lazy_module
from glacier_mapping.store import Artifact
from glacier_mapping.workflow import Context

inference = lazy_module("glacier_mapping.inference")
patches = lazy_module("glacier_mapping.data.patches")

#: Windows per model call when predicting benchmark tiles: all 25 windows of a quick-profile
#: tile (192 px, 64 px windows) in one call, one traced shape. On the quick test split (21
#: tiles) 2.2 s against 2.9 s with 8 windows per call, identical probabilities.
TILE_WINDOWS_PER_CALL = 32

#: Picks a tile's location input: ``(tile) -> vector or None``.
LocationOf = Callable[[Tile], np.ndarray | None]


def training_regions(context: Context, spec: ExperimentSpec) -> set[str]:
    """Regions a model saw in training (its own list, or every region of the training file)."""
    return set(spec.regions) if spec.regions is not None else set(
        split_regions(context.benchmark.train))


def location_vector(
    spec: ExperimentSpec, region: str, bounds: Sequence[float], known_regions: set[str]
) -> np.ndarray | None:
    """The location input for a tile: its region's slot (unknown if unseen) or its centre."""
    if spec.location == "region":
        return patches.region_vector(region if region in known_regions else UNKNOWN_REGION)
    if spec.location == "coordinates":
        xmin, xmax, ymin, ymax = bounds
        return patches.coordinate_vector((ymin + ymax) / 2.0, (xmin + xmax) / 2.0)
    return None


def _predict_tiles(directory: Path, path: Path, model: Any, spec: ExperimentSpec,  # noqa: ANN401
                   regions: Sequence[str] | None, acquisition: str | None,
                   location_of: LocationOf) -> dict[str, Any]:
    """Predict every matching tile of ``path`` into ``probs.npz`` and ``tiles.csv``."""
    probabilities: dict[str, np.ndarray] = {}
    rows = []
    for tile in iter_tiles(path, sensors=spec.sensors, regions=regions):
        kind = str(tile.attrs.get("acquisition", ""))
        if acquisition is not None and kind != acquisition:
            continue
        probs = inference.predict_array(model, tile.features, spec.patch_size,
                                        batch_size=TILE_WINDOWS_PER_CALL,
                                        location=location_of(tile))
        probabilities[tile.name] = probs[..., GLACIER_CLASS].astype(np.float16)
        rows.append({"tile": tile.name, "region": tile.region, "subregion": tile.subregion,
                     "acquisition": kind, "date": str(tile.attrs.get("date", ""))})
    if not rows:
        raise ValueError(
            f"No tiles of {path} match regions={regions}, acquisition={acquisition}, "
            f"sensors={list(spec.sensors)}."
        )
    np.savez_compressed(directory / "probs.npz", **probabilities)
    pd.DataFrame(rows).to_csv(directory / "tiles.csv", index=False)
    return {"tiles": len(rows)}


def predict_split(
    context: Context,
    trained: Experiment,
    split: str,
    regions: Sequence[str] | None = None,
    acquisition: str | None = None,
    unknown_region: bool = False,
) -> Artifact:
    """Glacier probabilities of every tile of a split (cached as ``probs.npz`` + ``tiles.csv``).

    Args:
        context: The chapter context.
        trained: The model.
        split: ``val``, ``test`` or ``independent``.
        regions: Only tiles of these regions.
        acquisition: For the independent split: ``temporal`` or ``spatial`` tiles only.
        unknown_region: Region encoding: feed the unknown slot even for known regions.
    """
    spec = trained.spec
    params = {"split": split, "regions": list(regions) if regions else None,
              "acquisition": acquisition, "unknown_region": unknown_region}
    known = training_regions(context, spec)

    def location_of(tile: Tile) -> np.ndarray | None:
        if unknown_region and spec.location == "region":
            return patches.region_vector(UNKNOWN_REGION)
        return location_vector(spec, tile.region, tile.bounds, known)

    def build(directory: Path) -> dict[str, Any]:
        return _predict_tiles(directory, context.benchmark.split_path(split),
                              prediction_model(trained), spec, regions, acquisition, location_of)

    return context.store.get_or_create("predictions", params, build, inputs=[trained.artifact])


def predict_with_vector(
    context: Context, trained: Experiment, vector: np.ndarray, split: str = "independent",
    regions: Sequence[str] | None = None, acquisition: str | None = "spatial",
    load_model: Callable[[], Any] | None = None,
) -> Artifact:
    """Predictions of a region-encoding model with one fixed location vector for every tile.

    Same files as :func:`predict_split`, so :func:`evaluate_split` scores it; cached by the
    vector (rounded to 1e-9).

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
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (len(LOCATION_SLOTS),):
        raise ValueError(f"vector must have {len(LOCATION_SLOTS)} entries; got {vector.shape}.")
    params = {"split": split, "regions": list(regions) if regions else None,
              "acquisition": acquisition, "vector": [round(float(v), 9) for v in vector]}
    fixed = vector.astype(np.float32)

    def build(directory: Path) -> dict[str, Any]:
        return _predict_tiles(directory, context.benchmark.split_path(split),
                              (load_model or trained.load)(), trained.spec, regions,
                              acquisition, lambda tile: fixed)

    return context.store.get_or_create("vector_predictions", params, build,
                                       inputs=[trained.artifact])


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
        predictions: An artifact of :func:`predict_split` or :func:`predict_with_vector`.
        sensors: Feature groups to read besides the labels (none by default).
    """
    meta = context.store.metadata(predictions)
    path = context.benchmark.split_path(meta["params"]["split"])
    rows = pd.read_csv(predictions.file("tiles.csv"), keep_default_na=False)
    with np.load(predictions.file("probs.npz")) as probs:
        for row in rows.to_dict("records"):
            tile = read_tile(path, row["tile"], sensors=list(sensors))
            yield row, tile, two_class(probs[row["tile"]])


def evaluate_split(context: Context, predictions: Artifact) -> pd.DataFrame:
    """Confusion counts per tile of a predictions artifact, pooled by ``evaluate_predictions``.

    Counts are taken over the unpadded pixels of each tile; prediction = probability >= 0.5.
    """
    records = []
    for row, tile, probs in iter_predictions(context, predictions):
        predicted = (probs[..., GLACIER_CLASS] >= 0.5).astype(np.int64)
        records.append({**row, **confusion_counts(predicted, tile.labels, tile.valid)})
    return evaluate_predictions(records)


def held_out_predictions(context: Context, trained: Experiment) -> dict[str, Artifact]:
    """Cached predictions of the test split and of each independent acquisition kind.

    Keys are ``test``, ``temporal`` and ``spatial`` (those present): every labelled split the
    model was neither trained nor calibrated on. The independent predictions use the same
    parameters as chapter 03, so its cache is reused.
    """
    sources = {"test": predict_split(context, trained, "test")}
    if context.benchmark.independent is not None:
        for acquisition in ("temporal", "spatial"):
            regions = split_regions(context.benchmark.independent, acquisition)
            if regions:
                sources[acquisition] = predict_split(context, trained, "independent",
                                                     regions=regions, acquisition=acquisition)
    return sources
