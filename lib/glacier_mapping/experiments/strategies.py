"""The paper's five generalisation strategies as declarative experiments, run through the store.

An :class:`ExperimentSpec` says what to train (architecture, preset, sensors, regions, location
encoding, initial weights, schedule); :func:`global_experiment` reads the profile's, and
:func:`strategy_experiments` derives every strategy's from it. Training them is
:mod:`glacier_mapping.experiments.runner`'s job.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from glacier_mapping.config import DEFAULT_LEARNING_RATE, FINETUNE_LEARNING_RATE
from glacier_mapping.data.schema import (
    COORDINATE_VECTOR_SIZE,
    REGION_VECTOR_SIZE,
    check_sensors,
)
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
    learning_rate: float = DEFAULT_LEARNING_RATE
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

    @property
    def build(self) -> tuple[Any, ...]:
        """What the model's variables depend on: architecture, inputs, preset."""
        return (self.architecture, self.sensors, self.patch_size, self.preset,
                self.location_size)

    def key_params(self) -> dict[str, Any]:
        """Everything that determines the trained model (the parent enters as an input)."""
        params = dataclasses.asdict(self)
        params.pop("finetune_from")
        params.pop("name")
        return params


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
    preset = model.preset if architecture == "glavitu" else model.baseline_preset
    seed = context.seed if seed is None else seed
    return ExperimentSpec(
        name=name or f"{architecture}-global",
        architecture=architecture, preset=preset, sensors=tuple(sensors),
        regions=tuple(regions) if regions else None,
        patch_size=model.patch_size, batch_size=training.batch_size,
        epochs=training.epochs, steps_per_epoch=training.steps_per_epoch,
        learning_rate=training.learning_rate, restart_epochs=training.restart_epochs,
        seed=seed, batchnorm_momentum=training.batchnorm_momentum,
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
                regions=(code,), epochs=finetune_epochs, learning_rate=FINETUNE_LEARNING_RATE,
                restart_epochs=(),
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


def profile_strategy_experiments(context: Context) -> dict[str, list[ExperimentSpec]]:
    """Every strategy's experiments as the profile sets them (chapters 03 and 06)."""
    return strategy_experiments(global_experiment(context),
                                regions=context.profile.experiments.strategy_regions,
                                finetune_epochs=context.profile.training.finetune_epochs)


#: The splits chapter 03 compares strategies on: label -> (split, acquisition).
STRATEGY_SPLITS: dict[str, tuple[str, str | None]] = {
    "test": ("test", None), "temporal": ("independent", "temporal"),
    "spatial": ("independent", "spatial"),
}
