"""Typed loading and validation of run profiles (``smoke``, ``quick``, ``paper``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from glacier_mapping.distribute import DISTRIBUTE_CHOICES

PROFILE_NAMES: tuple[str, ...] = ("smoke", "quick", "paper")
_TOP_LEVEL_KEYS = {
    "name", "description", "seed", "notebook_budget_minutes", "data", "model", "training",
    "experiments", "notebooks",
}
_REQUIRED_KEYS = {"name", "description", "seed", "data", "model", "training"}


class ProfileError(ValueError):
    """A profile file is missing, malformed or holds a bad value."""


@dataclass(frozen=True)
class Profile:
    """One run profile: how big the data, models and training are for a whole book run.

    Attributes:
        name: Profile name (``smoke``, ``quick``, ``paper`` or a custom file's name).
        description: One sentence on what the profile is for.
        seed: Seed for data generation, training and evaluation.
        notebook_budget_minutes: Notebook time the whole book should stay within.
        data: Benchmark settings (keyword arguments of ``BenchmarkSpec``).
        model: Model settings (architecture presets, patch size).
        training: Training schedule settings.
        experiments: Chapter-specific experiment settings (strategies, ablation seeds, ...).
        notebooks: Per-notebook parameter overrides injected by the runner.
        source: File the profile was read from.
    """

    name: str
    description: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    experiments: dict[str, Any] = field(default_factory=dict)
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notebook_budget_minutes: float | None = None
    source: str = ""

    def notebook_parameters(self, notebook: str) -> dict[str, Any]:
        """Parameters the runner injects into ``notebook`` (a stem like ``01_data_preparation``)."""
        return dict(self.notebooks.get(notebook, {}))

    def as_dict(self) -> dict[str, Any]:
        """The profile as plain data (for manifests and model cards)."""
        return {
            "name": self.name, "description": self.description, "seed": self.seed,
            "notebook_budget_minutes": self.notebook_budget_minutes, "data": self.data,
            "model": self.model, "training": self.training, "experiments": self.experiments,
            "notebooks": self.notebooks, "source": self.source,
        }


def profile_path(name: str) -> Path:
    """Path of a packaged profile, or of a YAML file given by path."""
    candidate = Path(name)
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise ProfileError(f"Profile file {candidate} does not exist.")
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
        raise ProfileError(f"Profile {path} is not valid YAML: {error}") from None
    profile = parse_profile(raw, source=str(path))
    if seed is not None:
        profile = Profile(**{**profile.__dict__, "seed": _check_seed(seed, path)})
    return profile


def parse_profile(raw: Any, source: str = "<memory>") -> Profile:  # noqa: ANN401
    """Validate profile data read from YAML and build a :class:`Profile`."""
    if not isinstance(raw, dict):
        raise ProfileError(f"Profile {source} must be a YAML mapping, got {type(raw).__name__}.")
    unknown = set(raw) - _TOP_LEVEL_KEYS
    if unknown:
        raise ProfileError(
            f"Profile {source} has unknown key(s) {sorted(unknown)}; "
            f"allowed keys are {sorted(_TOP_LEVEL_KEYS)}."
        )
    missing = _REQUIRED_KEYS - set(raw)
    if missing:
        raise ProfileError(f"Profile {source} lacks required key(s) {sorted(missing)}.")
    for section in ("data", "model", "training", "experiments", "notebooks"):
        if not isinstance(raw.get(section, {}), dict):
            raise ProfileError(f"Profile {source}: '{section}' must be a mapping.")
    for notebook, params in raw.get("notebooks", {}).items():
        if not isinstance(params, dict):
            raise ProfileError(
                f"Profile {source}: notebooks.{notebook} must be a mapping of parameter values."
            )
    budget = raw.get("notebook_budget_minutes")
    if budget is not None and (not isinstance(budget, int | float) or budget <= 0):
        raise ProfileError(f"Profile {source}: notebook_budget_minutes must be a positive number.")
    _check_positive_ints(
        raw["training"],
        ("epochs", "steps_per_epoch", "batch_size", "parallel_experiments"),
        source,
    )
    _check_distribute(raw["training"], source)
    momentum = raw["training"].get("batchnorm_momentum")
    if momentum is not None and (not isinstance(momentum, float) or not 0.0 < momentum < 1.0):
        raise ProfileError(
            f"Profile {source}: training.batchnorm_momentum={momentum!r} must be a number in "
            "(0, 1), e.g. 0.9, or absent (the model's own momentum)."
        )
    _check_positive_ints(raw["model"], ("patch_size",), source)
    patch = raw["model"].get("patch_size")
    if patch is not None and patch % 16:
        raise ProfileError(
            f"Profile {source}: model.patch_size={patch} must be a multiple of 16 "
            "(the ViT patch size of GlaViTU)."
        )
    return Profile(
        name=str(raw["name"]),
        description=str(raw["description"]),
        seed=_check_seed(raw["seed"], source),
        data=dict(raw["data"]),
        model=dict(raw["model"]),
        training=dict(raw["training"]),
        experiments=dict(raw.get("experiments", {})),
        notebooks={str(k): dict(v) for k, v in raw.get("notebooks", {}).items()},
        notebook_budget_minutes=budget,
        source=source,
    )


def _check_seed(seed: Any, source: object) -> int:  # noqa: ANN401
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ProfileError(f"Profile {source}: seed must be a non-negative integer, got {seed!r}.")
    return seed


def _check_distribute(training: dict[str, Any], source: str) -> None:
    value = training.get("distribute", "none")
    if value not in DISTRIBUTE_CHOICES:
        raise ProfileError(
            f"Profile {source}: training.distribute={value!r} must be one of "
            f"{list(DISTRIBUTE_CHOICES)}."
        )


def _check_positive_ints(section: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    for key in keys:
        value = section.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ProfileError(
                f"Profile {source}: {key} must be a positive integer, got {value!r}."
            )
