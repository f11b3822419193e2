"""The five generalisation strategies as declarative experiments."""

import dataclasses

import pytest

from glacier_mapping.config import DEFAULT_LEARNING_RATE, load_profile
from glacier_mapping.experiments.strategies import (
    FINETUNE_LEARNING_RATE,
    STRATEGIES,
    STRATEGY_SPLITS,
    ExperimentSpec,
    global_experiment,
    profile_strategy_experiments,
    strategy_experiments,
)
from glacier_mapping.store import ArtifactStore, artifact_key
from glacier_mapping.workflow import Context


def _context(tmp_path, profile="quick", seed=None):
    out = tmp_path / "out"
    return Context(load_profile(profile, seed=seed), out, ArtifactStore(out / "cache"), None,
                   "k", True)


BASE = ExperimentSpec(name="g", preset="tiny", patch_size=32, epochs=5, steps_per_epoch=3,
                      restart_epochs=(2, 5))


def test_spec_validation_errors():
    with pytest.raises(ValueError, match="strategy='bogus'.*global"):
        ExperimentSpec(name="x", strategy="bogus")
    with pytest.raises(ValueError, match="architecture='unet'.*glavitu"):
        ExperimentSpec(name="x", architecture="unet")
    with pytest.raises(ValueError, match="Unknown sensor"):
        ExperimentSpec(name="x", sensors=("optical", "lidar"))
    with pytest.raises(ValueError, match="x: finetune_from must be given exactly"):
        ExperimentSpec(name="x", strategy="finetuning")
    with pytest.raises(ValueError, match="y: finetune_from"):
        ExperimentSpec(name="y", strategy="regional", finetune_from=BASE)
    tuned = ExperimentSpec(name="t", strategy="finetuning", finetune_from=BASE)
    assert tuned.finetune_from is BASE


def test_spec_normalises_sensors_and_regions():
    spec = ExperimentSpec(name="x", sensors=["thermal", "dem", "optical"], regions=["HMA", "ALP"])
    assert spec.sensors == ("optical", "dem", "thermal")  # canonical order
    assert spec.regions == ("HMA", "ALP")  # a tuple, order kept
    assert ExperimentSpec(name="x").regions is None


@pytest.mark.parametrize(("strategy", "location", "size"), [
    ("global", None, None), ("regional", None, None),
    ("region_encoding", "region", 12), ("coordinate_encoding", "coordinates", 4),
])
def test_location_of_each_strategy(strategy, location, size):
    spec = dataclasses.replace(BASE, strategy=strategy)
    assert spec.location == location and spec.location_size == size
    assert spec.build == ("glavitu", ("optical", "dem"), 32, "tiny", size)


def test_build_and_key_params():
    assert dataclasses.replace(BASE, epochs=50, seed=3).build == BASE.build
    assert dataclasses.replace(BASE, sensors=("optical",)).build != BASE.build
    params = BASE.key_params()
    assert "name" not in params and "finetune_from" not in params
    assert params["strategy"] == "global" and params["sensors"] == ("optical", "dem")
    assert params["restart_epochs"] == (2, 5) and params["epochs"] == 5
    # The name does not enter the key; the schedule does.
    renamed = dataclasses.replace(BASE, name="other")
    assert artifact_key("model", renamed.key_params()) == artifact_key("model", params)
    longer = dataclasses.replace(BASE, epochs=6)
    assert artifact_key("model", longer.key_params()) != artifact_key("model", params)
    tuned = ExperimentSpec(name="t", strategy="finetuning", finetune_from=BASE)
    other_parent = ExperimentSpec(name="t", strategy="finetuning",
                                  finetune_from=dataclasses.replace(BASE, seed=9))
    assert tuned.key_params() == other_parent.key_params()  # the parent enters as an input


def test_global_experiment_reads_the_profile(tmp_path):
    ctx = _context(tmp_path)
    model, training = ctx.profile.model, ctx.profile.training
    spec = global_experiment(ctx)
    assert spec.name == "glavitu-global" and spec.strategy == "global"
    assert spec.architecture == "glavitu" and spec.preset == model.preset == "small"
    assert spec.patch_size == model.patch_size == 64
    assert (spec.batch_size, spec.epochs, spec.steps_per_epoch) == (8, 12, 25)
    assert spec.restart_epochs == training.restart_epochs == (4, 12)
    assert spec.learning_rate == training.learning_rate == DEFAULT_LEARNING_RATE
    assert spec.batchnorm_momentum == 0.9 and spec.seed == 42
    assert spec.regions is None and spec.sensors == ("optical", "dem")


def test_global_experiment_arguments(tmp_path):
    ctx = _context(tmp_path, "paper", seed=3)
    deeplab = global_experiment(ctx, architecture="deeplab", sensors=("optical",), seed=7,
                                name="base", regions=["HMA"])
    assert deeplab.name == "base" and deeplab.architecture == "deeplab"
    assert deeplab.preset == ctx.profile.model.baseline_preset
    assert deeplab.sensors == ("optical",) and deeplab.seed == 7 and deeplab.regions == ("HMA",)
    assert global_experiment(ctx).seed == 3  # the context's seed
    assert global_experiment(ctx, architecture="deeplab").name == "deeplab-global"
    assert global_experiment(ctx).restart_epochs == (10, 30, 70, 150)
    assert global_experiment(ctx, regions=[]).regions is None
    with pytest.raises(ValueError, match="architecture"):
        global_experiment(ctx, architecture="unet")


def test_strategy_experiments(tmp_path):
    experiments = strategy_experiments(BASE, ["HMA", "SVAL"], finetune_epochs=2)
    assert list(experiments) == list(STRATEGIES)
    assert experiments["global"] == [BASE]
    regional = experiments["regional"]
    assert [s.name for s in regional] == ["g-regional-HMA", "g-regional-SVAL"]
    assert [s.regions for s in regional] == [("HMA",), ("SVAL",)]
    assert all(s.strategy == "regional" and s.epochs == 5 and s.restart_epochs == (2, 5)
               for s in regional)
    tuned = experiments["finetuning"]
    assert [s.name for s in tuned] == ["g-finetuned-HMA", "g-finetuned-SVAL"]
    for spec, code in zip(tuned, ["HMA", "SVAL"], strict=True):
        assert spec.strategy == "finetuning" and spec.regions == (code,)
        assert spec.epochs == 2 and spec.restart_epochs == ()
        assert spec.learning_rate == FINETUNE_LEARNING_RATE == 5e-5
        assert spec.finetune_from is BASE
        assert spec.steps_per_epoch == BASE.steps_per_epoch and spec.seed == BASE.seed
    (encoded,) = experiments["region_encoding"]
    assert encoded.name == "g-region-encoding" and encoded.location == "region"
    assert encoded.regions is None and encoded.epochs == BASE.epochs
    (coordinates,) = experiments["coordinate_encoding"]
    assert coordinates.name == "g-coordinate-encoding" and coordinates.location_size == 4
    names = [s.name for specs in experiments.values() for s in specs]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="base must be a global experiment"):
        strategy_experiments(regional[0], ["HMA"], 2)
    assert strategy_experiments(BASE, [], 2)["regional"] == []


def test_profile_strategy_experiments(tmp_path):
    ctx = _context(tmp_path)
    experiments = profile_strategy_experiments(ctx)
    assert experiments["global"] == [global_experiment(ctx)]
    assert [s.regions for s in experiments["regional"]] == [("HMA",), ("SVAL",)]
    assert all(s.epochs == ctx.profile.training.finetune_epochs == 2
               for s in experiments["finetuning"])
    assert [s.name for s in experiments["finetuning"]] == [
        "glavitu-global-finetuned-HMA", "glavitu-global-finetuned-SVAL"]
    smoke = profile_strategy_experiments(_context(tmp_path, "smoke"))
    assert [s.name for s in smoke["regional"]] == ["glavitu-global-regional-HMA"]
    assert smoke["global"][0].preset == "tiny"


def test_strategy_splits():
    assert STRATEGY_SPLITS["test"] == ("test", None)
    assert STRATEGY_SPLITS["temporal"] == ("independent", "temporal")
    assert STRATEGY_SPLITS["spatial"] == ("independent", "spatial")
