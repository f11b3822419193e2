"""Bias optimisation: fit a soft region vector to an unlabelled scene by minimising entropy.

For a region-encoding model and a scene from a region it never saw, the model's weights stay
fixed and only a 12-vector of logits (initialised to ones) is trained. Its softmax is fed as the
``location`` input, and Adam minimises the mean normalised Shannon entropy of the ``output``
head over random patches of the scene, as in the original ``bias_optimisation`` notebook. The
result is stored as JSON with the slot names of :data:`~glacier_mapping.data.schema.LOCATION_SLOTS`.

The book's runs: :func:`optimise_region` optimises the vector of an unseen region of the
benchmark on the unlabelled tiles of its independent split (cached, published to
``outputs/<profile>/region_vectors/<REGION>.json``), :func:`optimise_regions` several regions in
worker processes, and :func:`compare_region_vectors` scores location vectors on a region.

Stands in for: the region one-hot vector of a region the model knows. Breaks down when the scene
is unlike every training region: low entropy then means confident, not right.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from glacier_mapping.data.patches import region_vector
from glacier_mapping.data.schema import LOCATION_INPUT, LOCATION_SLOTS, REGION_VECTOR_SIZE
from glacier_mapping.data.splits import region_tiles, stack_tiles
from glacier_mapping.evaluation import COUNT_COLUMNS
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.predictions import evaluate_split, predict_with_vector
from glacier_mapping.scheduling import run_groups, uses_workers
from glacier_mapping.store import atomic_copy, atomic_write_json
from glacier_mapping.workflow import Context

_PROB_EPS = 1e-6
_PROGRESS_EVERY = 10
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BiasOptimisationResult:
    """Outcome of :func:`optimise_region_vector`.

    Attributes:
        vector: Soft region vector (softmax weights, sums to 1), shape ``(12,)``.
        logits: The optimised logits the vector is the softmax of, shape ``(12,)``.
        epochs_run: Number of epochs run.
        converged: Whether the stopping rule fired before ``max_epochs``.
        entropy_history: Mean normalised entropy of each epoch's batches.
    """

    vector: np.ndarray
    logits: np.ndarray
    epochs_run: int
    converged: bool
    entropy_history: list[float] = field(default_factory=list)

    def weights(self) -> dict[str, float]:
        """The vector as ``{slot name: weight}``."""
        return dict(zip(LOCATION_SLOTS, self.vector.tolist(), strict=True))


def _input_shapes(model: keras.Model) -> dict[str, tuple[int | None, ...]]:
    inputs = model.input
    if not isinstance(inputs, dict):
        raise ValueError(
            "The model's inputs must be a dict keyed by sensor name plus 'location'; got "
            f"{type(inputs).__name__}. Build the model with keras.Model(inputs=dict, ...)."
        )
    shapes = {name: tuple(tensor.shape) for name, tensor in inputs.items()}
    location = shapes.get(LOCATION_INPUT)
    if location is None or location[-1] != REGION_VECTOR_SIZE:
        raise ValueError(
            f"Bias optimisation needs a region-encoding model with a '{LOCATION_INPUT}' input "
            f"of size {REGION_VECTOR_SIZE}; this model's inputs are {shapes}."
        )
    return shapes


def _scene_arrays(
    features: Mapping[str, np.ndarray],
    shapes: dict[str, tuple[int | None, ...]],
    patch_size: int,
) -> dict[str, np.ndarray]:
    sensors = [name for name in shapes if name != LOCATION_INPUT]
    missing = [name for name in sensors if name not in features]
    if missing:
        raise ValueError(
            f"features lacks the model input(s) {missing}; pass an (H, W, C) array for each of "
            f"{sensors}."
        )
    scene: dict[str, np.ndarray] = {}
    for name in sensors:
        array = np.asarray(features[name], dtype=np.float32)
        expected = shapes[name]
        if array.ndim != 3 or array.shape[-1] != expected[-1]:
            raise ValueError(
                f"features['{name}'] must be (H, W, {expected[-1]}); got {array.shape}."
            )
        if np.isnan(array).any():
            raise ValueError(
                f"features['{name}'] contains NaN; fill or crop nodata before bias optimisation."
            )
        if any(size is not None and size != patch_size for size in expected[1:3]):
            raise ValueError(
                f"patch_size={patch_size} does not match the model's '{name}' input {expected}."
            )
        scene[name] = array
    sizes = {array.shape[:2] for array in scene.values()}
    if len(sizes) != 1:
        raise ValueError(f"All features must share one (H, W); got {sorted(sizes)}.")
    height, width = sizes.pop()
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"The scene ({height} x {width}) is smaller than patch_size={patch_size}; use a "
            "smaller patch size or a larger scene."
        )
    return scene


def _random_batch(
    scene: dict[str, np.ndarray], patch_size: int, batch_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    height, width = next(iter(scene.values())).shape[:2]
    rows = rng.integers(0, height - patch_size + 1, batch_size)
    cols = rng.integers(0, width - patch_size + 1, batch_size)
    return {
        name: np.stack([array[r:r + patch_size, c:c + patch_size] for r, c in zip(rows, cols,
                                                                                   strict=True)])
        for name, array in scene.items()
    }


def _normalised_entropy(probs: tf.Tensor) -> tf.Tensor:
    p = ops.clip(probs, _PROB_EPS, 1.0 - _PROB_EPS)
    return ops.mean(-ops.sum(p * ops.log(p), axis=-1)) / math.log(2.0)


def _top_slot(vector: np.ndarray) -> str:
    index = int(np.argmax(vector))
    return f"{LOCATION_SLOTS[index]} {vector[index]:.3f}"


def optimise_region_vector(
    model: keras.Model,
    features: Mapping[str, np.ndarray],
    patch_size: int,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    max_epochs: int = 100,
    tolerance: float = 1e-8,
    patience: int = 5,
    batches_per_epoch: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> BiasOptimisationResult:
    """Optimise the soft region vector of a frozen region-encoding model on one scene.

    Each epoch draws ``batches_per_epoch`` batches of random patches and takes one Adam step
    per batch on the mean normalised entropy of the ``output`` head (model called with
    ``training=False``; only the 12 logits are updated, the model is not modified). Training
    stops once the squared change of the softmax vector over an epoch (sum of squares) stays
    below ``tolerance`` for ``patience`` consecutive epochs, or after ``max_epochs``.

    Args:
        model: Keras model with dict inputs (sensor names and ``location`` of size 12) and a dict
            output holding ``output`` (softmax, ``(B, P, P, 2)``).
        features: Normalised scene arrays ``(H, W, C)`` keyed by sensor name (extra keys are
            ignored).
        patch_size: Side of the random square patches (the model's patch size).
        batch_size: Patches per step (8 in the original).
        learning_rate: Adam learning rate (1e-4 in the original).
        max_epochs: Upper bound on epochs (100 in the original).
        tolerance: Threshold on the per-epoch squared change of the vector (1e-8).
        patience: Epochs the change must stay below ``tolerance`` (5).
        batches_per_epoch: Steps per epoch; default ``ceil(H * W / patch_size**2 / batch_size)``
            (the scene covered about once), at least 1.
        seed: Seed of the patch positions.
        progress: Print one line every 10 epochs and a final summary line.

    Returns:
        The optimised vector, its logits, epochs run, whether it converged and the entropy
        history.

    Raises:
        ValueError: for a model without a 12-slot ``location`` input, missing, misshapen or NaN
            features, a scene smaller than a patch, or non-positive settings.
    """
    for name, value in (("patch_size", patch_size), ("batch_size", batch_size),
                        ("max_epochs", max_epochs), ("patience", patience),
                        ("learning_rate", learning_rate)):
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {value}.")
    if batches_per_epoch is not None and batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be at least 1; got {batches_per_epoch}.")
    scene = _scene_arrays(features, _input_shapes(model), patch_size)
    height, width = next(iter(scene.values())).shape[:2]
    if batches_per_epoch is None:
        batches_per_epoch = max(1, math.ceil(height * width / patch_size**2 / batch_size))

    logits = keras.Variable(np.ones(REGION_VECTOR_SIZE, dtype="float32"), name="region_logits")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)

    @tf.function
    def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            vector = ops.softmax(logits)
            location = ops.tile(vector[None, :], (batch_size, 1))
            outputs = model({**batch, LOCATION_INPUT: location}, training=False)
            loss = _normalised_entropy(outputs["output"])
        (gradient,) = tape.gradient(loss, [logits])
        if gradient is None:  # the model ignores its location input: the vector stays put
            gradient = ops.zeros_like(logits)
        optimizer.apply_gradients([(gradient, logits)])
        return loss

    rng = np.random.default_rng(seed)
    vector = _softmax(np.asarray(logits.numpy()))
    history: list[float] = []
    calm_epochs = 0
    converged = False
    for epoch in range(1, max_epochs + 1):
        losses = [float(train_step(_random_batch(scene, patch_size, batch_size, rng)))
                  for _ in range(batches_per_epoch)]
        history.append(float(np.mean(losses)))
        new_vector = _softmax(np.asarray(logits.numpy()))
        change = float(np.sum((new_vector - vector) ** 2))
        vector = new_vector
        calm_epochs = calm_epochs + 1 if change < tolerance else 0
        converged = calm_epochs >= patience
        if progress and (epoch == 1 or epoch % _PROGRESS_EVERY == 0) and not converged:
            print(f"bias optimisation: epoch {epoch}/{max_epochs}  entropy {history[-1]:.4f}  "
                  f"change {change:.1e}  top {_top_slot(vector)}", flush=True)
        if converged:
            break
    if progress:
        reason = "converged" if converged else "reached max_epochs"
        print(f"bias optimisation: {reason} after {epoch} epochs x {batches_per_epoch} batches; "
              f"entropy {history[0]:.4f} -> {history[-1]:.4f}; top {_top_slot(vector)}",
              flush=True)
    return BiasOptimisationResult(
        vector=vector.astype(np.float64),
        logits=np.asarray(logits.numpy(), dtype=np.float64),
        epochs_run=epoch,
        converged=converged,
        entropy_history=history,
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()


def _check_vector(vector: np.ndarray, source: str) -> np.ndarray:
    if vector.shape != (REGION_VECTOR_SIZE,) or not np.all(np.isfinite(vector)) or np.any(
            vector < 0):
        raise ValueError(
            f"{source}: a region vector needs {REGION_VECTOR_SIZE} finite non-negative weights "
            f"(slots {list(LOCATION_SLOTS)}); got shape {vector.shape}."
        )
    return vector


def save_region_vector(
    result_or_vector: BiasOptimisationResult | np.ndarray,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a region vector as JSON (atomically), with slot names and optional metadata.

    Args:
        result_or_vector: A :class:`BiasOptimisationResult` (its optimisation record is kept
            too) or a 12-vector.
        path: Destination ``.json`` file.
        metadata: JSON-serialisable extras, e.g. scene name and model.

    Returns:
        The path written.

    Raises:
        ValueError: if the vector is not 12 finite non-negative weights.
    """
    is_result = isinstance(result_or_vector, BiasOptimisationResult)
    vector = result_or_vector.vector if is_result else result_or_vector
    vector = _check_vector(np.asarray(vector, dtype=np.float64), "save_region_vector")
    data: dict[str, Any] = {
        "kind": "region_vector",
        "format_version": _FORMAT_VERSION,
        "slots": list(LOCATION_SLOTS),
        "vector": vector.tolist(),
        "metadata": dict(metadata or {}),
    }
    if is_result:
        data["optimisation"] = {
            "logits": result_or_vector.logits.tolist(),
            "epochs_run": result_or_vector.epochs_run,
            "converged": result_or_vector.converged,
            "entropy_history": list(result_or_vector.entropy_history),
        }
    return atomic_write_json(path, data)


def load_region_vector(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a region vector written by :func:`save_region_vector`.

    Returns:
        The vector, shape ``(12,)``, float64, in :data:`LOCATION_SLOTS` order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a region-vector JSON or its slots differ from ours.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No region vector at {path}; run optimise_region_vector and save_region_vector."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != "region_vector":
        raise ValueError(f"{path} is not a region-vector JSON (expected kind 'region_vector').")
    if data.get("slots") != list(LOCATION_SLOTS):
        raise ValueError(
            f"{path} has slots {data.get('slots')}; this library expects {list(LOCATION_SLOTS)}."
        )
    return _check_vector(np.asarray(data.get("vector"), dtype=np.float64), str(path))


def slot_vector(code: str) -> np.ndarray:
    """One-hot location vector of a slot (a region code or ``UNKNOWN``), float64."""
    return region_vector(code).astype(np.float64)


def vector_frame(vectors: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Optimised vectors per region as a long table: ``region, slot, weight, change``.

    ``change`` is the weight minus the uniform start ``1 / 12``.
    """
    start = 1.0 / len(LOCATION_SLOTS)
    return pd.DataFrame([{"region": region, "slot": slot, "weight": float(weight),
                          "change": float(weight) - start}
                         for region, vector in vectors.items()
                         for slot, weight in zip(LOCATION_SLOTS, vector, strict=True)])


def _region_vector_params(
    region: str, acquisition: str, max_epochs: int, seed: int
) -> dict[str, Any]:
    """What the key of a region-vector artifact is made of (besides the model)."""
    return {"region": region, "acquisition": acquisition, "max_epochs": max_epochs, "seed": seed}


def optimise_region(
    context: Context, trained: Experiment, region: str, max_epochs: int,
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
    seed = context.seed if seed is None else seed
    spec = trained.spec
    params = _region_vector_params(region, acquisition, max_epochs, seed)
    if uses_workers(context) and not context.store.exists("region_vector", params,
                                                          [trained.artifact]):
        # Optimised in a worker, like every gradient task of this profile: its result must
        # not depend on where it ran (see glacier_mapping.scheduling); then read from the store.
        run_groups(context, _optimise_region_task,
                   [[(trained, region, max_epochs, acquisition, seed)]])

    def build(directory: Path) -> dict[str, Any]:
        features = stack_tiles(region_tiles(context.benchmark.split_path("independent"),
                                            region, spec.sensors, acquisition=acquisition))
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
    target = atomic_copy(artifact.file("region_vector.json"),
                         context.output_dir / "region_vectors" / f"{region}.json")
    data = json.loads(target.read_text())
    return {"vector": np.asarray(data["vector"], dtype=np.float64),
            "epochs_run": data["optimisation"]["epochs_run"],
            "converged": data["optimisation"]["converged"],
            "entropy_history": data["optimisation"]["entropy_history"],
            "seconds": data["metadata"]["seconds"], "path": target}


def optimise_regions(
    context: Context, trained: Experiment, regions: Sequence[str], max_epochs: int,
    acquisition: str = "spatial", load_model: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`optimise_region` for several regions, side by side in worker processes.

    Regions are independent, so they run in parallel when the profile allows it
    (``training.parallel_experiments``, :mod:`glacier_mapping.scheduling`); the results are then
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


def _optimise_region_task(
    context: Context, item: tuple[Experiment, str, int, str, int]
) -> None:
    """Worker task of :func:`optimise_regions` and :func:`optimise_region`."""
    trained, region, max_epochs, acquisition, seed = item
    optimise_region(context, trained, region, max_epochs, acquisition, seed)


def compare_region_vectors(
    context: Context, trained: Experiment, region: str, vectors: Mapping[str, np.ndarray],
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
