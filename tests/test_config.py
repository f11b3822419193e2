"""Profile loading and validation."""

import pytest

from glacier_mapping.config import PROFILE_NAMES, ProfileError, load_profile, parse_profile

MINIMAL = {
    "name": "x", "description": "d", "seed": 1, "data": {}, "model": {"patch_size": 64},
    "training": {"epochs": 2},
}


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_packaged_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.model["patch_size"] % 16 == 0


def test_seed_override():
    assert load_profile("smoke", seed=7).seed == 7


def test_unknown_profile_names_the_choices():
    with pytest.raises(ProfileError, match="smoke"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "unknown key"),
        ({"training": {"epochs": 0}}, "epochs"),
        ({"model": {"patch_size": 50}}, "multiple of 16"),
        ({"notebooks": {"01_x": 3}}, "notebooks.01_x"),
        ({"training": {"epochs": 1, "batchnorm_momentum": 1.0}}, "batchnorm_momentum"),
    ],
)
def test_bad_values_are_named(change, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile({**MINIMAL, **change})


def test_missing_key_is_named():
    raw = dict(MINIMAL)
    del raw["training"]
    with pytest.raises(ProfileError, match="training"):
        parse_profile(raw)


def test_yaml_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndescription: d\nseed: 3\ndata: {}\nmodel: {}\ntraining: {}\n")
    assert load_profile(str(path)).seed == 3
    path.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(path))
