"""Profile loading: typed settings, one default per setting, unknown keys refused by name."""

import dataclasses

import pytest

from glacier_mapping.config import (
    DEFAULT_LEARNING_RATE,
    PROFILE_NAMES,
    ExperimentSettings,
    ModelSettings,
    ProfileError,
    TrainingSettings,
    load_profile,
    parse_profile,
)

MINIMAL = {
    "name": "x", "description": "d", "seed": 1, "data": {"regions": ["ALP"]},
    "model": {"patch_size": 64},
    "training": {"batch_size": 2, "epochs": 2, "steps_per_epoch": 3},
    "experiments": {"strategy_regions": ["ALP"], "ablation_seeds": [1], "bias_max_epochs": 2,
                    "scene_epochs": 1},
}


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_packaged_profiles_load_into_typed_settings(name):
    profile = load_profile(name)
    assert profile.name == name
    assert isinstance(profile.model, ModelSettings)
    assert isinstance(profile.training, TrainingSettings)
    assert isinstance(profile.experiments, ExperimentSettings)
    assert profile.model.patch_size % 16 == 0
    # one patch size: the benchmark pads its tiles to the model's
    assert profile.data.patch_size == profile.model.patch_size
    assert profile.data.seed == profile.seed


def test_defaults_come_from_one_place():
    profile = parse_profile(MINIMAL)
    assert profile.training.learning_rate == DEFAULT_LEARNING_RATE
    assert profile.training.parallel_experiments == 1
    assert profile.training.distribute == "none"
    assert profile.experiments.everest_learning_rate is None  # the training's rate is used


def test_seed_override_reaches_the_benchmark():
    profile = load_profile("smoke", seed=7)
    assert profile.seed == 7 and profile.data.seed == 7


def test_unknown_profile_names_the_choices():
    with pytest.raises(ProfileError, match="smoke"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("section", "key"),
    [("training", "learning_rte"), ("model", "patchsize"), ("experiments", "ablation_seed"),
     ("data", "patch_size"), ("data", "tiles")],
)
def test_unknown_keys_are_refused_by_name(section, key):
    raw = {**MINIMAL, section: {**MINIMAL[section], key: 1}}
    with pytest.raises(ProfileError, match=rf"unknown key.*'{section}\.{key}'"):
        parse_profile(raw)


def test_unknown_top_level_key_is_refused_by_name():
    with pytest.raises(ProfileError, match="unknown key.*'notebooks'"):
        parse_profile({**MINIMAL, "notebooks": {"01_x": {"seed": 3}}})


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("training", {"epochs": 0}, "training.epochs"),
        ("training", {"learning_rate": -1.0}, "training.learning_rate"),
        ("training", {"batchnorm_momentum": 1.0}, "batchnorm_momentum"),
        ("training", {"distribute": "horovod"}, "training.distribute"),
        ("model", {"patch_size": 50}, "multiple of 16"),
        ("experiments", {"bias_max_epochs": 0}, "experiments.bias_max_epochs"),
        ("experiments", {"ablation_seeds": []}, "ablation_seeds"),
        ("data", {"regions": ["NOPE"]}, "data section"),
    ],
)
def test_bad_values_are_named(section, change, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile({**MINIMAL, section: {**MINIMAL[section], **change}})


def test_bad_seed_is_named():
    with pytest.raises(ProfileError, match="seed"):
        parse_profile({**MINIMAL, "seed": -1})


@pytest.mark.parametrize(("section", "key"), [("training", "steps_per_epoch"),
                                              ("model", "patch_size"), ("experiments",
                                                                        "scene_epochs")])
def test_missing_required_setting_is_named(section, key):
    values = dict(MINIMAL[section])
    del values[key]
    with pytest.raises(ProfileError, match=rf"{section}\.{key}"):
        parse_profile({**MINIMAL, section: values})


def test_missing_section_is_named():
    raw = dict(MINIMAL)
    del raw["training"]
    with pytest.raises(ProfileError, match="training"):
        parse_profile(raw)


def test_settings_are_frozen():
    profile = parse_profile(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.training.epochs = 5


def test_yaml_file_path(tmp_path):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "seed": 3}))
    assert load_profile(str(path)).seed == 3
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(path))
