"""environment.yml and pyproject.toml name the same pinned dependencies."""

import os
import re
import tomllib

import yaml

from conftest import REPO


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[([a-z,]+)\])?==(.+)", spec)
        name, version = match.group(1, 3)
        extras = re.search(r"\[([a-z,]+)\]", spec)
        pins[name.lower()] = version
        for extra in (extras.group(1).split(",") if extras else []):
            pins[extra] = version
    return pins


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        name, version = dep.split("=", 1)
        pins[name.lower()] = version
    return pins


def test_environment_yml_matches_pyproject():
    conda = _conda_pins()
    conda.pop("python")
    assert conda == _pyproject_pins()


def test_every_dependency_is_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        assert "==" in spec, f"{spec} is not pinned"


def test_package_import_defers_tensorflow_and_mutes_its_banner():
    import subprocess
    import sys

    script = (
        "import sys, glacier_mapping\n"
        "assert 'tensorflow' not in sys.modules, 'import glacier_mapping imported TensorFlow'\n"
        "import keras, tensorflow\n"
        "assert type(tensorflow.__loader__).__name__ != '_MutedLoader'\n"
        "sys.stderr.write('after import\\n')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # Only what the program itself writes after the import reaches standard error.
    assert done.stderr == "after import\n"
