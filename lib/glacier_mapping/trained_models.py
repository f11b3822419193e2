"""The one training recipe: a model trained once, kept in the store with its model card.

:func:`train_cached` is how every model of the book is trained (the strategies and the ablation
through :mod:`glacier_mapping.experiments.runner`, the Everest study directly): the caller says
what to train (a :class:`TrainingSetup`: model, datasets, schedule, normalisation, the card's
facts), the recipe trains it in the store's temporary directory, keeps the best checkpoint,
the history, the normalisation statistics and a :class:`ModelCard`, and publishes them to
``outputs/<profile>/models/<name>/``. An interrupted training resumes; a rerun trains nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pandas as pd

from glacier_mapping.convergence import assess
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.lazy import lazy_module
from glacier_mapping.store import Artifact, atomic_copy, atomic_write_json
from glacier_mapping.workflow import Context

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

models = lazy_module("glacier_mapping.models")
training = lazy_module("glacier_mapping.training")

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
HISTORY_FILE = "history.csv"
NORM_STATS_FILE = "norm_stats.json"
#: Files published to ``outputs/<profile>/models/<name>/``.
PUBLISHED_FILES: tuple[str, ...] = (MODEL_FILE, CARD_FILE, HISTORY_FILE, NORM_STATS_FILE)

Spec = TypeVar("Spec")


@dataclass(frozen=True)
class ModelCard:
    """What a trained model is, what it saw and how its training went (``model_card.json``).

    Attributes:
        name: Experiment name (``outputs/<profile>/models/<name>``).
        architecture: ``glavitu`` or ``deeplab``.
        preset: Model size preset.
        strategy: Training strategy (``global``, ..., ``single scene``).
        sensors: Input sensor groups.
        regions: Training regions, or ``"all"``.
        location: Location input (``region``, ``coordinates``) or None.
        patch_size: Training patch size (pixels).
        training_data: Fingerprint of the benchmark, or a description of the scene.
        synthetic_data: Whether the training data are the synthetic stand-in (None: a scene).
        seed: Training seed.
        learning_rate: Peak learning rate.
        batchnorm_momentum: BatchNormalization momentum during training (None: the model's).
        finetuned_from: Name of the model finetuning started from.
        bands: How the input bands were filled (scenes with missing bands), or None.
        distribute: ``tf.distribute`` setting of the training.
        replicas: Replicas that trained it.
        parameter_count: Scalars in all weights.
        epochs: Completed epochs.
        steps: Training steps (epochs x steps per epoch).
        best_epoch: Epoch of the kept checkpoint (1-based).
        best_validation_value: Its monitored validation value.
        convergence: :func:`glacier_mapping.convergence.assess` of the history.
        train_seconds: Wall seconds of training.
        norm_stats: File of the normalisation statistics deployment must apply.
    """

    name: str
    architecture: str
    preset: str
    strategy: str
    sensors: tuple[str, ...]
    regions: tuple[str, ...] | str = "all"
    location: str | None = None
    patch_size: int = 0
    training_data: str | dict[str, Any] = ""
    synthetic_data: bool | None = None
    seed: int = 0
    learning_rate: float = 0.0
    batchnorm_momentum: float | None = None
    finetuned_from: str | None = None
    bands: dict[str, str] | None = None
    distribute: str = "none"
    replicas: int = 1
    parameter_count: int = 0
    epochs: int = 0
    steps: int = 0
    best_epoch: int = 0
    best_validation_value: float = float("nan")
    convergence: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    norm_stats: str = NORM_STATS_FILE

    def write(self, path: str | Path) -> Path:
        """Write the card as JSON (atomically)."""
        return atomic_write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read a card; keys of other versions are ignored, missing ones take their defaults."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["sensors"] = tuple(values.get("sensors", ()))
        if isinstance(values.get("regions"), list):
            values["regions"] = tuple(values["regions"])
        return cls(**values)

    def regions_text(self) -> str:
        """Training regions for tables: codes joined by ``+``, or ``all``."""
        return self.regions if isinstance(self.regions, str) else "+".join(self.regions)


@dataclass(frozen=True)
class TrainedModel(Generic[Spec]):
    """A trained model: what was asked for (its spec), its store artifact and its card."""

    spec: Spec
    artifact: Artifact
    card: ModelCard

    @property
    def model_path(self) -> Path:
        """The best checkpoint (Keras native format)."""
        return self.artifact.file(MODEL_FILE)

    def load(self) -> keras.Model:
        """Load the model for inference (Keras safe mode; custom layers are registered)."""
        return models.load_model(self.model_path)

    def norm_stats(self) -> NormStats:
        """The normalisation statistics the model was trained with."""
        return NormStats.from_json(self.artifact.file(self.card.norm_stats))

    def history(self) -> pd.DataFrame:
        """The training history (one row per epoch)."""
        return pd.read_csv(self.artifact.file(HISTORY_FILE))


@dataclass
class TrainingSetup:
    """What :func:`train_cached` trains: made only when the model is not in the store.

    Attributes:
        model: The freshly built (seeded) model.
        train: Training batches.
        validation: Validation batches (they select the kept checkpoint).
        config: The schedule.
        norm_stats: Normalisation the inputs were given (kept for deployment).
        card: The card's facts known before training (name, architecture, preset, strategy,
            sensors and what else applies).
    """

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset
    config: training.TrainConfig
    norm_stats: NormStats
    card: Mapping[str, Any]


def train_cached(
    context: Context,
    kind: str,
    params: Mapping[str, Any],
    setup: Callable[[], TrainingSetup],
    inputs: Sequence[Artifact] = (),
    verbose: bool = True,
) -> tuple[Artifact, ModelCard]:
    """Train a model once (or find it in the store) and publish it with its card.

    Args:
        context: The chapter context (store and output directory).
        kind: Artifact kind (``model``, ``everest-model``).
        params: Everything that determines the model (the artifact's key with ``inputs``).
        setup: Makes the model, data and schedule; called only when training is needed.
        inputs: Artifacts the model depends on (e.g. the model finetuning starts from).
        verbose: Print one line per epoch.

    Returns:
        The model's artifact and card.
    """
    def build(directory: Path) -> dict[str, Any]:
        run = setup()
        result = training.train_model(run.model, run.train, run.validation, run.config,
                                      directory / "training", verbose=verbose)
        shutil.copyfile(result.best_model_path, directory / MODEL_FILE)
        run.norm_stats.to_json(directory / NORM_STATS_FILE)
        result.history.to_csv(directory / HISTORY_FILE, index=False)
        card = ModelCard(
            **run.card, seed=run.config.seed, learning_rate=run.config.learning_rate,
            batchnorm_momentum=run.config.batchnorm_momentum,
            parameter_count=models.count_parameters(run.model), epochs=result.epochs_run,
            steps=result.epochs_run * run.config.steps_per_epoch, best_epoch=result.best_epoch,
            best_validation_value=result.best_value,
            convergence=assess(result.history).to_json(),
            train_seconds=round(result.train_seconds, 1),
        )
        card.write(directory / CARD_FILE)
        shutil.rmtree(directory / "training")  # the best model and the history are kept
        return {"train_seconds": card.train_seconds}

    artifact = context.store.get_or_create(kind, params, build, inputs=list(inputs),
                                           resumable=True)
    card = ModelCard.read(artifact.file(CARD_FILE))
    publish(context, card.name, artifact)
    return artifact, card


def publish(context: Context, name: str, artifact: Artifact) -> Path:
    """Copy a model's files to ``outputs/<profile>/models/<name>/`` (the results files)."""
    target = context.output_dir / "models" / name
    for file_name in PUBLISHED_FILES:
        if artifact.file(file_name).is_file():  # artifacts of older versions lack some files
            atomic_copy(artifact.file(file_name), target / file_name)
    return target


def histories(trained: Iterable[TrainedModel[Any]]) -> dict[str, pd.DataFrame]:
    """Training histories of several models, by model name."""
    return {model.card.name: model.history() for model in trained}


def model_loader(trained: TrainedModel[Any]) -> Callable[[], keras.Model]:
    """A loader that loads the model at most once (share it across the calls of a chapter)."""
    return functools.cache(trained.load)
