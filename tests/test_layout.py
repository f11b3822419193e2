"""The library's layout rules: one home for each thing, dependencies visible at the top."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib" / "glacier_mapping"
MODULES = sorted(LIB.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(node.args[0].value)
    return names


def test_only_notebooks_import_the_chapters_package():
    offenders = [
        f"{path.relative_to(LIB)} imports {name}" for path in MODULES
        if "chapters" not in path.relative_to(LIB).parts
        for name in _imported(_tree(path)) if name.startswith("glacier_mapping.chapters")
    ]
    assert not offenders, offenders
    notebooks = [p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")
                 if not p.stem.startswith("01_")]  # chapter 01 is all library calls
    chapters = {p.stem for p in (LIB / "chapters").glob("*.py")} - {"__init__"}
    assert chapters == {stem[3:] for stem in notebooks}  # one module per chapter, same name


def test_project_imports_sit_at_the_top_of_each_module():
    """Inside functions there are no imports of the project (``lazy_module`` is the one way)."""
    offenders = []
    for path in MODULES:
        for func in ast.walk(_tree(path)):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom) and any(
                        name.startswith("glacier_mapping") for name in _imported(node)):
                    offenders.append(f"{path.relative_to(LIB)}:{node.lineno}")
    assert not offenders, offenders


def test_lazy_modules_are_the_projects_own():
    """Keras and TensorFlow arrange their own imports and break when loaded lazily."""
    lazy = [name for path in MODULES for node in ast.walk(_tree(path))
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_module"
            for name in [node.args[0].value]]
    assert lazy and all(name.startswith("glacier_mapping.") for name in lazy), lazy


#: Patterns of plumbing that has one home; the value is the only file allowed to hold it.
ONE_HOME = {
    r"os\.replace\(|\b(tmp|path|partial|staged?)\.replace\(|\.tmp\b|mkstemp\(|\.rename\((?!columns)":
        "store.py",
    r"^class \w*(Blender|BlendAccumulator)\b": "windows.py",
    r"^COLUMNS: tuple|METRIC_COLUMNS|TIDY_COLUMNS": "metrics.py",
    r"^def coordinate_vector\(": "data/patches.py",
    r"^def write_metrics\(": "metrics.py",
    r"^def train_cached\(": "trained_models.py",
    r"^class ModelCard\b": "trained_models.py",
}


@pytest.mark.parametrize("pattern", ONE_HOME)
def test_shared_plumbing_has_one_definition(pattern):
    homes = {str(path.relative_to(LIB)) for path in MODULES
             if re.search(pattern, path.read_text(), flags=re.MULTILINE)}
    assert homes <= {ONE_HOME[pattern]}, homes
    assert homes, f"{pattern!r} is defined nowhere"


def test_no_module_is_named_after_a_chapter_outside_chapters():
    gone = ["confidence.py", "real_scene.py", "verdicts.py", "parallel.py", "strategies.py",
            "ablation.py"]
    assert not [name for name in gone if (LIB / name).exists()]


def test_ruff_passes_on_library_tests_benchmarks_and_notebooks():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "lib", "tests", "benchmarks", "notebooks"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
