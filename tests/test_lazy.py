"""The lazy importer: a module named at the top of a file runs on first attribute access."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from glacier_mapping.lazy import lazy_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A fresh module on sys.path that records each execution in a file; its name and log."""
    name = f"lazy_probe_{uuid.uuid4().hex[:8]}"
    log = tmp_path / "executions.log"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(log)!r}).open('a').write('executed\\n')\n"
        "ANSWER = 42\n"
        "def double(x):\n"
        "    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, log
    sys.modules.pop(name, None)


def _executions(log):
    return log.read_text().count("executed") if log.exists() else 0


def test_an_imported_module_is_returned_as_is():
    assert lazy_module("json") is json
    assert lazy_module("glacier_mapping.lazy") is sys.modules["glacier_mapping.lazy"]


def test_module_runs_on_first_attribute_access_only(probe):
    name, log = probe
    module = lazy_module(name)
    assert _executions(log) == 0  # found, not executed
    assert sys.modules[name] is module
    assert lazy_module(name) is module and _executions(log) == 0  # a second call shares it
    assert module.ANSWER == 42
    assert _executions(log) == 1
    assert module.double(4) == 8 and module.__name__ == name
    __import__(name)
    assert _executions(log) == 1  # executed exactly once, importing it later reuses it
    assert sys.modules[name] is module


def test_a_normal_import_after_the_lazy_one_executes_it_once(probe):
    name, log = probe
    lazy = lazy_module(name)
    imported = __import__(name)
    assert imported is lazy
    assert imported.ANSWER == 42 and _executions(log) == 1


def test_missing_module_raises(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz") as error:
        lazy_module("no_such_module_xyz")
    assert error.value.name == "no_such_module_xyz"
    assert "no_such_module_xyz" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="nothing_here"):
        lazy_module("glacier_mapping.nothing_here")
    assert "glacier_mapping.nothing_here" not in sys.modules


def test_importing_the_training_recipe_does_not_execute_tensorflow():
    """The purpose: modules that name TensorFlow-backed modules lazily import without them."""
    code = (
        "import json, sys\n"
        "import glacier_mapping.trained_models, glacier_mapping.experiments.ablation\n"
        "loaded = [m for m in sys.modules if m.startswith(('tensorflow', 'keras'))]\n"
        "print(json.dumps({'loaded': loaded}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"loaded": []}


def test_a_lazy_submodule_is_an_attribute_of_its_package(tmp_path, monkeypatch):
    package = tmp_path / f"lazy_pkg_{uuid.uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        parent = __import__(package.name)
        lazy_module(f"{package.name}.sub")
        assert parent.sub.VALUE == 7
    finally:
        sys.modules.pop(f"{package.name}.sub", None)
        sys.modules.pop(package.name, None)
