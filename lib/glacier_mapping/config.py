"""Run profiles (``smoke``, ``quick``, ``paper``) parsed once into typed, validated settings.

A profile is a YAML file with the sections ``data``, ``model``, ``training`` and
``experiments``. Each section becomes a frozen dataclass; a key that no dataclass field names is
refused with a message naming it, and every default lives in exactly one place (the field's
default). The patch size is stated once, under ``model``; the synthetic benchmark pads its tiles
to it. Chapters receive their settings one way: ``context.profile.<section>.<field>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from glacier_mapping.data.benchmark import BenchmarkSpec
from glacier_mapping.distribute import DISTRIBUTE_CHOICES

PROFILE_NAMES: tuple[str, ...] = ("smoke", "quick", "paper")
#: Peak learning rate of the paper's schedule (Adam, cosine with warm restarts).
DEFAULT_LEARNING_RATE = 5e-4
#: Learning rate of finetuning (the original: 5e-5, cosine to 0 over one cycle).
FINETUNE_LEARNING_RATE = 5e-5
#: ViT patch size of GlaViTU: training patches are a multiple of it.
VIT_PATCH = 16


class ProfileError(ValueError):
    """A profile file is missing, malformed or holds a bad value."""


@dataclass(frozen=True)
class ModelSettings:
    """Model sizes and the one patch size of a run.

    Attributes:
        preset: GlaViTU size preset (``paper``, ``small``, ``tiny``).
        baseline_preset: DeepLabv3+ size preset.
        patch_size: Training and inference window (pixels), a multiple of 16.
    """

    patch_size: int
    preset: str = "small"
    baseline_preset: str = "small"


@dataclass(frozen=True)
class TrainingSettings:
    """The training schedule shared by every experiment of a run.

    Attributes:
        batch_size: Patches per batch.
        epochs: Epochs of a model trained from scratch.
        steps_per_epoch: Batches per epoch.
        learning_rate: Peak learning rate.
        restart_epochs: Epochs at which cosine cycles end; empty for one cycle over all epochs.
        batchnorm_momentum: BatchNormalization momentum during training (None: the model's).
        finetune_epochs: Epochs of each finetuning run.
        parallel_experiments: Experiments trained at the same time, each in its own process.
        distribute: ``none``, ``mirrored`` or ``multi-worker`` (``tf.distribute``).
        run_eagerly: Train without graph tracing (worth it for a few dozen steps).
    """

    batch_size: int
    epochs: int
    steps_per_epoch: int
    learning_rate: float = DEFAULT_LEARNING_RATE
    restart_epochs: tuple[int, ...] = ()
    batchnorm_momentum: float | None = None
    finetune_epochs: int = 2
    parallel_experiments: int = 1
    distribute: str = "none"
    run_eagerly: bool = False


@dataclass(frozen=True)
class ExperimentSettings:
    """What the chapters' experiments cover.

    Attributes:
        strategy_regions: Regions that get a regional and a finetuned model (chapter 03).
        ablation_sets: Sensor sets of the ablation (chapter 04); empty for all.
        ablation_seeds: Training seeds of every ablation model.
        ablation_epochs: Epochs of the ablation models (None: ``training.epochs``).
        ablation_preset: GlaViTU preset of the ablation models (None: ``model.preset``).
        bias_max_epochs: Upper bound on bias-optimisation epochs (chapter 06).
        scene_epochs: Epochs of the Everest single-scene model (chapter 08).
        everest_architecture: ``glavitu`` or ``deeplab`` for the Everest model.
        everest_steps_per_epoch: Its batches per epoch (None: ``training.steps_per_epoch``).
        everest_learning_rate: Its peak learning rate (None: ``training.learning_rate``).
    """

    strategy_regions: tuple[str, ...]
    ablation_seeds: tuple[int, ...]
    bias_max_epochs: int
    scene_epochs: int
    ablation_sets: tuple[str, ...] = ()
    ablation_epochs: int | None = None
    ablation_preset: str | None = None
    everest_architecture: str = "glavitu"
    everest_steps_per_epoch: int | None = None
    everest_learning_rate: float | None = None


#: Fields of the ``data`` section: the synthetic benchmark's, except the ones the profile
#: states elsewhere (``seed`` at the top, ``patch_size`` under ``model``).
DATA_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(BenchmarkSpec) if f.name not in ("seed", "patch_size"))
_TOP_LEVEL_KEYS = ("name", "description", "seed", "notebook_budget_minutes", "data", "model",
                   "training", "experiments")
_REQUIRED_KEYS = ("name", "description", "seed", "data", "model", "training", "experiments")


@dataclass(frozen=True)
class Profile:
    """One run profile: how big the data, models and training are for a whole book run.

    Attributes:
        name: Profile name (``smoke``, ``quick``, ``paper`` or a custom file's name).
        description: One sentence on what the profile is for.
        seed: Seed for data generation, training and evaluation.
        data: The synthetic benchmark (its seed and patch size are the profile's).
        model: Model settings.
        training: Training schedule.
        experiments: What the chapters' experiments cover.
        notebook_budget_minutes: Notebook time the whole book should stay within.
        source: File the profile was read from.
    """

    name: str
    description: str
    seed: int
    data: BenchmarkSpec
    model: ModelSettings
    training: TrainingSettings
    experiments: ExperimentSettings
    notebook_budget_minutes: float | None = None
    source: str = field(default="", compare=False)

    def with_seed(self, seed: int) -> Profile:
        """The same profile with another seed (the benchmark's included)."""
        seed = _check_seed(seed, self.source)
        return dataclasses.replace(self, seed=seed, data=dataclasses.replace(self.data, seed=seed))

    def as_dict(self) -> dict[str, Any]:
        """The profile as plain data (for manifests and model cards)."""
        return {
            "name": self.name, "description": self.description, "seed": self.seed,
            "notebook_budget_minutes": self.notebook_budget_minutes,
            "data": self.data.to_dict(), "model": dataclasses.asdict(self.model),
            "training": dataclasses.asdict(self.training),
            "experiments": dataclasses.asdict(self.experiments), "source": self.source,
        }


def profile_path(name: str) -> Path:
    """Path of a packaged profile, or of a YAML file given by path."""
    candidate = Path(name)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ProfileError(
                f"Profile file {candidate} does not exist; pass the path of an existing YAML "
                f"profile or one of {list(PROFILE_NAMES)}."
            )
        return candidate
    packaged = resources.files("glacier_mapping") / "profiles" / f"{name}.yaml"
    if not packaged.is_file():
        raise ProfileError(
            f"Unknown profile {name!r}: choose one of {list(PROFILE_NAMES)} "
            "or pass the path of a YAML profile file."
        )
    return Path(str(packaged))


def load_profile(name: str, seed: int | None = None) -> Profile:
    """Load and validate a profile by name (packaged) or path; ``seed`` overrides its seed."""
    path = profile_path(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ProfileError(f"Profile {path} is not valid YAML{where}: {problem}; fix the "
                           "file.") from None
    profile = parse_profile(raw, source=str(path))
    return profile if seed is None else profile.with_seed(seed)


def parse_profile(raw: Any, source: str = "<memory>") -> Profile:  # noqa: ANN401
    """Validate profile data read from YAML and build a :class:`Profile`."""
    if not isinstance(raw, dict):
        raise ProfileError(f"Profile {source} must be a YAML mapping, got {type(raw).__name__}.")
    _check_keys(raw, _TOP_LEVEL_KEYS, "", source)
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise ProfileError(f"Profile {source} lacks required key(s) {missing}.")
    budget = raw.get("notebook_budget_minutes")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise ProfileError(f"Profile {source}: notebook_budget_minutes must be a positive number.")
    seed = _check_seed(raw["seed"], source)
    model = _section(ModelSettings, raw, "model", source)
    training = _section(TrainingSettings, raw, "training", source)
    experiments = _section(ExperimentSettings, raw, "experiments", source)
    _validate(model, training, experiments, source)
    data = _mapping(raw, "data", source)
    _check_keys(data, DATA_KEYS, "data.", source)
    try:
        spec = BenchmarkSpec(**{k: _tuples(v) for k, v in data.items()},
                             patch_size=model.patch_size, seed=seed)
    except (TypeError, ValueError, KeyError) as error:
        raise ProfileError(f"Profile {source}: the data section is not a benchmark: "
                           f"{error}") from None
    return Profile(name=str(raw["name"]), description=str(raw["description"]), seed=seed,
                   data=spec, model=model, training=training, experiments=experiments,
                   notebook_budget_minutes=budget, source=source)


def _mapping(raw: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    value = raw.get(section)
    if not isinstance(value, dict):
        raise ProfileError(f"Profile {source}: '{section}' must be a mapping.")
    return value


def _check_keys(values: dict[str, Any], allowed: tuple[str, ...], prefix: str,
                source: str) -> None:
    unknown = [key for key in values if key not in allowed]
    if unknown:
        raise ProfileError(
            f"Profile {source} has unknown key(s) {[prefix + str(k) for k in unknown]}; "
            f"allowed keys{' under ' + prefix[:-1] if prefix else ''} are {list(allowed)}."
        )


def _tuples(value: Any) -> Any:  # noqa: ANN401
    return tuple(value) if isinstance(value, list) else value


def _section(kind: type, raw: dict[str, Any], section: str, source: str) -> Any:  # noqa: ANN401
    values = _mapping(raw, section, source)
    names = tuple(f.name for f in fields(kind))
    _check_keys(values, names, f"{section}.", source)
    required = [f.name for f in fields(kind)
                if f.default is dataclasses.MISSING and f.name not in values]
    if required:
        raise ProfileError(f"Profile {source} lacks {[f'{section}.{k}' for k in required]}.")
    return kind(**{key: _tuples(value) for key, value in values.items()})


def _validate(model: ModelSettings, training: TrainingSettings,
              experiments: ExperimentSettings, source: str) -> None:
    """Refuse values no run can use, naming the key and what would fix it."""
    positive = {"model.patch_size": model.patch_size, "training.batch_size": training.batch_size,
                "training.epochs": training.epochs,
                "training.steps_per_epoch": training.steps_per_epoch,
                "training.finetune_epochs": training.finetune_epochs,
                "training.parallel_experiments": training.parallel_experiments,
                "experiments.bias_max_epochs": experiments.bias_max_epochs,
                "experiments.scene_epochs": experiments.scene_epochs,
                "experiments.ablation_epochs": experiments.ablation_epochs,
                "experiments.everest_steps_per_epoch": experiments.everest_steps_per_epoch}
    for key, value in positive.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            raise ProfileError(f"Profile {source}: {key} must be a positive integer, "
                               f"got {value!r}.")
    if model.patch_size % VIT_PATCH:
        raise ProfileError(
            f"Profile {source}: model.patch_size={model.patch_size} must be a multiple of "
            f"{VIT_PATCH} (the ViT patch size of GlaViTU)."
        )
    if training.distribute not in DISTRIBUTE_CHOICES:
        raise ProfileError(
            f"Profile {source}: training.distribute={training.distribute!r} must be one of "
            f"{list(DISTRIBUTE_CHOICES)}."
        )
    momentum = training.batchnorm_momentum
    if momentum is not None and (not isinstance(momentum, float) or not 0.0 < momentum < 1.0):
        raise ProfileError(
            f"Profile {source}: training.batchnorm_momentum={momentum!r} must be a number in "
            "(0, 1), e.g. 0.9, or absent (the model's own momentum)."
        )
    for key, rate in (("training.learning_rate", training.learning_rate),
                      ("experiments.everest_learning_rate", experiments.everest_learning_rate)):
        if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
            raise ProfileError(f"Profile {source}: {key}={rate!r} must be a positive number.")
    if not experiments.ablation_seeds:
        raise ProfileError(f"Profile {source}: experiments.ablation_seeds must list a seed.")


def _check_seed(seed: Any, source: object) -> int:  # noqa: ANN401
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ProfileError(f"Profile {source}: seed (or --seed) must be a non-negative integer, "
                           f"got {seed!r}.")
    return seed
