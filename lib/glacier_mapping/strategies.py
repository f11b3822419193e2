"""The paper's five generalisation strategies as declarative experiments, run through the store.

An :class:`ExperimentSpec` says what to train (architecture, preset, sensors, regions, location
encoding, initial weights, schedule). :func:`train_experiment` trains it once: the model is an
artifact keyed by the spec and the benchmark's fingerprint, so every chapter that asks for the
same spec (the global model of chapter 02 reused in chapters 03-08) gets the same model, and a
rerun trains nothing. :func:`predict_split` and :func:`evaluate_split` do the same for
predictions and confusion counts.

Strategies (original code's definitions, see METHODS.md):

- ``global``: one model on all training regions.
- ``regional``: one model per region, trained on that region only.
- ``finetuning``: the global model finetuned per region (lr 5e-5 cosine to 0, best val loss).
- ``region_encoding``: the global model with a 12-slot region one-hot as location input
  (10 % of training patches get the "unknown" slot; unseen regions use it at test time).
- ``coordinate_encoding``: the global model with sin/cos of the patch centre (radians).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.convergence import assess
from glacier_mapping.data.schema import (
    COORDINATE_VECTOR_SIZE,
    GLACIER_CLASS,
    REGION_VECTOR_SIZE,
    UNKNOWN_REGION,
    check_sensors,
)
from glacier_mapping.store import Artifact, atomic_write_json
from glacier_mapping.workflow import Context

STRATEGIES: tuple[str, ...] = (
    "global", "regional", "finetuning", "region_encoding", "coordinate_encoding",
)
ARCHITECTURES: tuple[str, ...] = ("glavitu", "deeplab")
_LOCATION_OF_STRATEGY = {"region_encoding": "region", "coordinate_encoding": "coordinates"}


@dataclass(frozen=True)
class ExperimentSpec:
    """One training experiment.

    Attributes:
        name: Short unique name (used for ``outputs/<profile>/models/<name>``).
        strategy: One of :data:`STRATEGIES`.
        architecture: ``glavitu`` or ``deeplab``.
        preset: Model size preset (``paper``, ``small``, ``tiny``).
        sensors: Input sensor groups.
        regions: Training regions; ``None`` for every region of the training file.
        patch_size: Training patch size (pixels).
        batch_size: Patches per batch.
        epochs: Training epochs.
        steps_per_epoch: Batches per epoch.
        learning_rate: Peak learning rate.
        restart_epochs: Epochs at which cosine cycles end; empty for one cycle over all epochs.
        seed: Training seed.
        batchnorm_momentum: BatchNormalization momentum during training (None: the model's).
        finetune_from: For ``finetuning``: the experiment whose model is the starting point.
    """

    name: str
    strategy: str = "global"
    architecture: str = "glavitu"
    preset: str = "small"
    sensors: tuple[str, ...] = ("optical", "dem")
    regions: tuple[str, ...] | None = None
    patch_size: int = 64
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 50
    learning_rate: float = 5e-4
    restart_epochs: tuple[int, ...] = ()
    seed: int = 0
    batchnorm_momentum: float | None = None
    finetune_from: ExperimentSpec | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: choose one of {list(STRATEGIES)}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r}: choose one of {list(ARCHITECTURES)}."
            )
        object.__setattr__(self, "sensors", check_sensors(list(self.sensors)))
        if self.regions is not None:
            object.__setattr__(self, "regions", tuple(self.regions))
        if (self.strategy == "finetuning") != (self.finetune_from is not None):
            raise ValueError(
                f"{self.name}: finetune_from must be given exactly for the finetuning strategy."
            )

    @property
    def location(self) -> str | None:
        """Location input of the strategy: ``region``, ``coordinates`` or None."""
        return _LOCATION_OF_STRATEGY.get(self.strategy)

    @property
    def location_size(self) -> int | None:
        """Length of the location vector (12 or 4), or None."""
        return {"region": REGION_VECTOR_SIZE, "coordinates": COORDINATE_VECTOR_SIZE}.get(
            self.location or ""
        )

    def key_params(self) -> dict[str, Any]:
        """Everything that determines the trained model (the parent enters as an input)."""
        params = dataclasses.asdict(self)
        params.pop("finetune_from")
        params.pop("name")
        return params


@dataclass(frozen=True)
class TrainedModel:
    """A trained experiment: its spec, its artifact and its model card."""

    spec: ExperimentSpec
    artifact: Artifact
    card: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The best checkpoint (Keras native format)."""
        return self.artifact.file("model.keras")

    def load(self) -> Any:  # noqa: ANN401
        """Load the model for inference (Keras safe mode; custom layers are registered)."""
        from glacier_mapping.models import load_model

        return load_model(self.model_path)


def global_experiment(
    context: Context,
    architecture: str = "glavitu",
    sensors: Sequence[str] = ("optical", "dem"),
    seed: int | None = None,
    name: str | None = None,
    regions: Sequence[str] | None = None,
) -> ExperimentSpec:
    """The global experiment of the run's profile (model and training sections)."""
    model, training = context.profile.model, context.profile.training
    preset = model["preset"] if architecture == "glavitu" else model["baseline_preset"]
    seed = context.seed if seed is None else seed
    return ExperimentSpec(
        name=name or f"{architecture}-global",
        architecture=architecture, preset=preset, sensors=tuple(sensors),
        regions=tuple(regions) if regions else None,
        patch_size=model["patch_size"], batch_size=training["batch_size"],
        epochs=training["epochs"], steps_per_epoch=training["steps_per_epoch"],
        learning_rate=training.get("learning_rate", 5e-4),
        restart_epochs=tuple(training.get("restart_epochs", ())), seed=seed,
        batchnorm_momentum=training.get("batchnorm_momentum"),
    )


def strategy_experiments(
    base: ExperimentSpec, regions: Sequence[str], finetune_epochs: int
) -> dict[str, list[ExperimentSpec]]:
    """The experiments of every strategy, built from the global experiment ``base``.

    Args:
        base: The global experiment (its schedule is shared by all but finetuning).
        regions: Regions that get a regional and a finetuned model.
        finetune_epochs: Epochs of each finetuning run.
    """
    if base.strategy != "global":
        raise ValueError(f"base must be a global experiment, got strategy {base.strategy!r}.")
    return {
        "global": [base],
        "regional": [
            dataclasses.replace(base, name=f"{base.name}-regional-{code}", strategy="regional",
                                regions=(code,))
            for code in regions
        ],
        "finetuning": [
            dataclasses.replace(
                base, name=f"{base.name}-finetuned-{code}", strategy="finetuning",
                regions=(code,), epochs=finetune_epochs, learning_rate=5e-5, restart_epochs=(),
                finetune_from=base,
            )
            for code in regions
        ],
        "region_encoding": [
            dataclasses.replace(base, name=f"{base.name}-region-encoding",
                                strategy="region_encoding")
        ],
        "coordinate_encoding": [
            dataclasses.replace(base, name=f"{base.name}-coordinate-encoding",
                                strategy="coordinate_encoding")
        ],
    }


def _train_config(
    spec: ExperimentSpec, parent: TrainedModel | None, run_eagerly: bool
) -> Any:  # noqa: ANN401
    from glacier_mapping.training import TrainConfig, finetune_config

    config = TrainConfig(
        epochs=spec.epochs, steps_per_epoch=spec.steps_per_epoch,
        learning_rate=spec.learning_rate,
        restart_epochs=spec.restart_epochs or (spec.epochs,), seed=spec.seed,
        batchnorm_momentum=spec.batchnorm_momentum, run_eagerly=run_eagerly,
    )
    if parent is None:
        return config
    return finetune_config(config, epochs=spec.epochs, init_weights=parent.model_path)


def train_experiment(context: Context, spec: ExperimentSpec, verbose: bool = True) -> TrainedModel:
    """Train an experiment once (or reuse it); write its model card to ``outputs/.../models``.

    When the profile trains in worker processes, a model not yet trained is trained in one
    (see :mod:`glacier_mapping.parallel`: its weights must not depend on where it trained).
    """
    import keras

    from glacier_mapping.data.patches import make_patch_dataset
    from glacier_mapping.distribute import training_strategy
    from glacier_mapping.models import build_model, count_parameters
    from glacier_mapping.parallel import uses_workers
    from glacier_mapping.training import train_model

    parent = train_experiment(context, spec.finetune_from, verbose) if spec.finetune_from else None
    inputs = [parent.artifact] if parent else []
    if uses_workers(context) and not context.store.exists(
            "model", _model_params(context, spec), inputs):
        return train_experiments(context, [spec], verbose=verbose)[0]
    deep_supervision = spec.architecture == "glavitu"
    bench = context.benchmark

    def build(directory: Path) -> dict[str, Any]:
        if verbose:
            print(f"Training {spec.name} ({spec.architecture}/{spec.preset}, "
                  f"{'+'.join(spec.sensors)}, {spec.epochs} epochs)")
        distribute = context.profile.training.get("distribute", "none")
        strategy = training_strategy(distribute)
        keras.utils.set_random_seed(spec.seed)  # the initial weights depend on the seed only
        with strategy.scope():  # train_model compiles and fits under the model's strategy
            model = build_model(
                spec.architecture, spec.sensors, spec.patch_size, spec.preset,
                location_size=spec.location_size, deep_supervision=deep_supervision,
            )
        if distribute == "none":
            model = _training_model(spec, model)
            trained_here.append(model)
        common = dict(sensors=spec.sensors, patch_size=spec.patch_size,
                      batch_size=spec.batch_size, location=spec.location,
                      deep_supervision=deep_supervision, regions=spec.regions)
        train_ds = make_patch_dataset(bench.train, mode="random", augment=True,
                                      seed=spec.seed, **common)
        val_ds = make_patch_dataset(bench.val, mode="sequential", augment=False,
                                    label_smoothing=0.0, seed=spec.seed, **common)
        config = _train_config(spec, parent, bool(context.profile.training.get("run_eagerly")))
        result = train_model(model, train_ds, val_ds, config, directory / "training",
                             verbose=verbose)
        shutil.copyfile(result.best_model_path, directory / "model.keras")
        bench.stats().to_json(directory / "norm_stats.json")  # what deployment must apply
        result.history.to_csv(directory / "history.csv", index=False)
        card = {
            "name": spec.name, "architecture": spec.architecture, "preset": spec.preset,
            "strategy": spec.strategy, "sensors": list(spec.sensors),
            "regions": list(spec.regions) if spec.regions else "all",
            "location": spec.location, "patch_size": spec.patch_size,
            "parameter_count": count_parameters(model), "training_data": context.data_key,
            "synthetic_data": context.synthetic, "seed": spec.seed,
            "epochs": result.epochs_run, "best_epoch": result.best_epoch,
            "best_validation_value": result.best_value,
            "convergence": assess(result.history).to_json(),
            "train_seconds": round(result.train_seconds, 1),
            "finetuned_from": spec.finetune_from.name if spec.finetune_from else None,
            "norm_stats": "norm_stats.json", "distribute": distribute,
            "replicas": strategy.num_replicas_in_sync,
        }
        atomic_write_json(directory / "model_card.json", card)
        shutil.rmtree(directory / "training")  # the best model and history are kept
        return {"train_seconds": card["train_seconds"]}

    trained_here: list[Any] = []  # the kept model, which ends holding the best weights
    artifact = context.store.get_or_create(
        "model", _model_params(context, spec), build, inputs=inputs, resumable=True,
    )
    if trained_here:
        _keep(spec, trained_here[0], holds=artifact.key)
    card = json.loads(artifact.file("model_card.json").read_text())
    _publish(context, spec, artifact)
    return TrainedModel(spec, artifact, card)


def _model_params(context: Context, spec: ExperimentSpec) -> dict[str, Any]:
    """What the key of an experiment's model artifact is made of (besides its parent)."""
    return {**spec.key_params(), "data": context.data_key}


def train_experiments(
    context: Context,
    specs: Sequence[ExperimentSpec],
    after: Callable[[Context, TrainedModel], Any] | None = None,
    verbose: bool = True,
) -> list[TrainedModel]:
    """Train experiments (or reuse them), several at a time when the profile allows it.

    Experiments of one build (architecture, inputs, preset) train one after another in one
    process, reusing its traced steps; builds train side by side in worker processes
    (``training.parallel_experiments``, see :mod:`glacier_mapping.parallel`). ``after``, a
    module-level function, runs right after each training in the same process, while the model
    is loaded: e.g. the predictions a chapter evaluates, which the chapter then finds in the
    store; for models trained before, it runs here while the workers train. Models whose parent
    (finetuning) is missing get it trained first, here.
    """
    from glacier_mapping.parallel import run_groups

    for parent in dict.fromkeys(spec.finetune_from for spec in specs if spec.finetune_from):
        train_experiment(context, parent, verbose)
    groups: dict[tuple[Any, ...], list[tuple[ExperimentSpec, Any, bool]]] = {}
    trained = []
    for spec in specs:
        if _is_trained(context, spec):
            trained.append(spec)
        else:
            groups.setdefault(_build_key(spec), []).append((spec, after, verbose))
    by_cost = sorted(groups.values(), key=lambda group: -sum(
        item[0].epochs * item[0].steps_per_epoch for item in group))  # longest first

    def follow_trained() -> None:  # here, while the workers train the others
        for spec in trained if after is not None else []:
            after(context, train_experiment(context, spec, verbose))

    run_groups(context, _train_and_follow, by_cost, describe=lambda item: item[0].name,
               meanwhile=follow_trained)
    return [train_experiment(context, spec, verbose) for spec in specs]


def _is_trained(context: Context, spec: ExperimentSpec) -> bool:
    """Whether the experiment's model is in the store (its parent must be)."""
    inputs = [train_experiment(context, spec.finetune_from, False).artifact] if (
        spec.finetune_from) else []
    return context.store.exists("model", _model_params(context, spec), inputs)


def _train_and_follow(
    context: Context, item: tuple[ExperimentSpec, Callable[..., Any] | None, bool]
) -> None:
    """Train one experiment, then run its follow-up (a worker task of train_experiments)."""
    spec, after, verbose = item
    trained = train_experiment(context, spec, verbose)
    if after is not None:
        after(context, trained)


def _build_key(spec: ExperimentSpec) -> tuple[Any, ...]:
    """What a model's variables depend on: architecture, inputs, preset."""
    return (spec.architecture, spec.sensors, spec.patch_size, spec.preset, spec.location_size)


def _training_model(spec: ExperimentSpec, fresh: Any) -> Any:  # noqa: ANN401
    """The model to train: ``fresh``, or an earlier model of the same build with its values.

    A model of the same architecture, inputs and preset used earlier in this process takes
    every variable of ``fresh`` (weights, BatchNorm statistics, dropout seed state), so it
    starts exactly where ``fresh`` would, and :func:`glacier_mapping.training.train_model`
    reuses its traced steps when the training setup matches (ablation seeds, regional and
    finetuned models of one strategy) instead of tracing them again (10-20 s each on 2 cores).
    """
    model, _ = _MODELS.pop(_build_key(spec), (None, None))
    if model is None:
        model = fresh
    else:
        for variable, value in zip(model.variables, fresh.variables, strict=True):
            variable.assign(value)
    _keep(spec, model)
    return model


def _prediction_model(trained: TrainedModel) -> Any:  # noqa: ANN401
    """A model holding ``trained``'s weights, reusing one of the same build when there is one.

    Only for immediate use: the next call for a model of the same build changes its weights.
    Reuse saves loading the whole model and tracing its inference function again, and a model
    that already holds ``trained``'s weights (just trained, or just used for another split) is
    not even reloaded (1-2 s per load of a small GlaViTU).
    """
    model, holds = _MODELS.pop(_build_key(trained.spec), (None, None))
    if model is None:
        model = trained.load()
    elif holds != trained.artifact.key:
        with warnings.catch_warnings():  # the file's optimizer state is not needed
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(trained.model_path)
    _keep(trained.spec, model, holds=trained.artifact.key)
    return model


def _keep(spec: ExperimentSpec, model: Any, holds: str | None = None) -> None:  # noqa: ANN401
    """Keep ``model`` as the most recent of its build, forgetting the oldest beyond a few.

    ``holds`` is the key of the model artifact whose weights ``model`` holds, if any.
    """
    _MODELS[_build_key(spec)] = (model, holds)
    while len(_MODELS) > MODELS_KEPT:
        _MODELS.pop(next(iter(_MODELS)))


#: Windows per model call when predicting benchmark tiles: all 25 windows of a quick-profile
#: tile (192 px, 64 px windows) in one call, one traced shape. On the quick test split (21
#: tiles) 2.2 s against 2.9 s with 8 windows per call, identical probabilities.
TILE_WINDOWS_PER_CALL = 32

#: Model builds this process keeps for reuse by training and prediction (a few MB each).
MODELS_KEPT = 4
_MODELS: dict[tuple[Any, ...], tuple[Any, str | None]] = {}


def _publish(context: Context, spec: ExperimentSpec, artifact: Artifact) -> None:
    """Copy the model and its card to ``outputs/<profile>/models/<name>/`` (results files)."""
    target = context.output_dir / "models" / spec.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "model_card.json", "history.csv", "norm_stats.json"):
        if not artifact.file(name).is_file():  # artifacts of older versions lack some files
            continue
        tmp = target / f".{name}.tmp"
        shutil.copyfile(artifact.file(name), tmp)
        tmp.replace(target / name)


def history(trained: TrainedModel) -> pd.DataFrame:
    """The training history of an experiment (one row per epoch)."""
    return pd.read_csv(trained.artifact.file("history.csv"))


def training_regions(context: Context, spec: ExperimentSpec) -> set[str]:
    """Regions a model saw in training (its own list, or every region of the training file)."""
    if spec.regions is not None:
        return set(spec.regions)
    import h5py

    with h5py.File(context.benchmark.train, "r") as handle:
        return {_text(group.attrs["region"]) for group in handle.values()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def location_vector(
    spec: ExperimentSpec, region: str, bounds: Sequence[float], known_regions: set[str]
) -> np.ndarray | None:
    """The location input for a tile: its region's slot (unknown if unseen) or its centre."""
    from glacier_mapping.data.patches import coordinate_vector, region_vector

    if spec.location == "region":
        return region_vector(region if region in known_regions else UNKNOWN_REGION)
    if spec.location == "coordinates":
        xmin, xmax, ymin, ymax = bounds
        return coordinate_vector((ymin + ymax) / 2.0, (xmin + xmax) / 2.0)
    return None


def predict_split(
    context: Context,
    trained: TrainedModel,
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
    from glacier_mapping.data.patches import region_vector
    from glacier_mapping.data.tiles import iter_tiles
    from glacier_mapping.inference import predict_array

    path = context.benchmark.split_path(split)
    spec = trained.spec
    params = {"split": split, "regions": list(regions) if regions else None,
              "acquisition": acquisition, "unknown_region": unknown_region}

    known = training_regions(context, spec)

    def build(directory: Path) -> dict[str, Any]:
        model = _prediction_model(trained)
        probabilities: dict[str, np.ndarray] = {}
        rows = []
        for tile in iter_tiles(path, sensors=spec.sensors, regions=regions):
            kind = str(tile.attrs.get("acquisition", ""))
            if acquisition is not None and kind != acquisition:
                continue
            location = (region_vector(UNKNOWN_REGION) if unknown_region and spec.location ==
                        "region" else location_vector(spec, tile.region, tile.bounds, known))
            probs = predict_array(model, tile.features, spec.patch_size,
                                  batch_size=TILE_WINDOWS_PER_CALL, location=location)
            probabilities[tile.name] = probs[..., GLACIER_CLASS].astype(np.float16)
            rows.append({"tile": tile.name, "region": tile.region, "subregion": tile.subregion,
                         "acquisition": kind, "date": str(tile.attrs.get("date", ""))})
        if not rows:
            raise ValueError(
                f"No tiles of split {split!r} match regions={regions}, "
                f"acquisition={acquisition}, sensors={list(spec.sensors)} in {path}."
            )
        np.savez_compressed(directory / "probs.npz", **probabilities)
        pd.DataFrame(rows).to_csv(directory / "tiles.csv", index=False)
        return {"tiles": len(rows)}

    return context.store.get_or_create("predictions", params, build, inputs=[trained.artifact])


def evaluate_split(context: Context, predictions: Artifact) -> pd.DataFrame:
    """Confusion counts per tile of a predictions artifact, pooled by :func:`evaluate_predictions`.

    Counts are taken over the unpadded pixels of each tile; prediction = probability >= 0.5.
    """
    from glacier_mapping.data.tiles import read_tile
    from glacier_mapping.evaluation import confusion_counts, evaluate_predictions

    meta = context.store.metadata(predictions)
    path = context.benchmark.split_path(meta["params"]["split"])
    tiles = pd.read_csv(predictions.file("tiles.csv"), keep_default_na=False)
    records = []
    with np.load(predictions.file("probs.npz")) as probs:
        for row in tiles.to_dict("records"):
            tile = read_tile(path, row["tile"], sensors=[])
            predicted = (probs[row["tile"]].astype(np.float32) >= 0.5).astype(np.int64)
            counts = confusion_counts(predicted, tile.labels, tile.valid)
            records.append({**row, **counts})
    return evaluate_predictions(records)


def tidy_metrics(
    evaluation: pd.DataFrame, trained: TrainedModel, chapter: str, split: str,
    experiment: str | None = None,
) -> pd.DataFrame:
    """An :func:`evaluate_split` table in the book's long metrics format."""
    from glacier_mapping.evaluation import to_tidy_metrics

    spec = trained.spec
    return to_tidy_metrics(
        evaluation, chapter=chapter, experiment=experiment or spec.name,
        model=spec.architecture, preset=spec.preset, strategy=spec.strategy,
        sensors=spec.sensors, split=split, seed=spec.seed,
    )


def model_facts(trained: TrainedModel, chapter: str) -> pd.DataFrame:
    """Parameter count and training time of a trained model as tidy metric rows."""
    spec = trained.spec
    base = {"chapter": chapter, "experiment": spec.name, "model": spec.architecture,
            "preset": spec.preset, "strategy": spec.strategy, "sensors": "+".join(spec.sensors),
            "split": "", "region": "ALL", "seed": spec.seed}
    return pd.DataFrame([
        {**base, "metric": "parameter_count", "value": trained.card["parameter_count"]},
        {**base, "metric": "train_seconds", "value": trained.card["train_seconds"]},
        {**base, "metric": "best_epoch", "value": trained.card["best_epoch"]},
    ])


#: The splits chapter 03 compares strategies on: label -> (split, acquisition).
STRATEGY_SPLITS: dict[str, tuple[str, str | None]] = {
    "test": ("test", None), "temporal": ("independent", "temporal"),
    "spatial": ("independent", "spatial"),
}


def strategy_predictions(
    context: Context, trained: TrainedModel, split: str, acquisition: str | None = None
) -> Artifact | None:
    """A strategy model's predictions on the regions of a split it applies to (None: none).

    Regional and finetuned models apply only to their own regions; the others to every region
    of the split (of the given acquisition kind, for the independent split).
    """
    import h5py

    with h5py.File(context.benchmark.split_path(split), "r") as handle:
        present = {
            _text(g.attrs["region"]) for g in handle.values()
            if acquisition is None or _text(g.attrs.get("acquisition", "")) == acquisition
        }
    regions = sorted(present & set(trained.spec.regions or present))
    if not regions:
        return None
    return predict_split(context, trained, split, regions=regions, acquisition=acquisition)


def predict_strategy_splits(context: Context, trained: TrainedModel) -> None:
    """Every prediction chapter 03 evaluates a model on (an ``after`` of train_experiments)."""
    for split, acquisition in STRATEGY_SPLITS.values():
        strategy_predictions(context, trained, split, acquisition)


def predict_test(context: Context, trained: TrainedModel) -> None:
    """Predict the whole test split (an ``after`` of train_experiments, chapter 02)."""
    predict_split(context, trained, "test")


def evaluate_strategies(
    context: Context,
    experiments: dict[str, list[TrainedModel]],
    split: str,
    acquisition: str | None = None,
    chapter: str = "03_strategy_comparison",
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
            rows = evaluation[evaluation.level == "region"].assign(strategy=strategy,
                                                                   experiment=trained.spec.name)
            tables.append(rows)
            tidy.append(tidy_metrics(evaluation, trained, chapter, label))
    if not tables:
        raise ValueError(f"No strategy applies to any region of split {label!r}.")
    return pd.concat(tables, ignore_index=True), pd.concat(tidy, ignore_index=True)
