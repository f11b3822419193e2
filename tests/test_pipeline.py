"""The Papermill runner, tested on small notebooks generated here (not the science chapters)."""

import json

import nbformat
import pytest
import yaml
from test_config import MINIMAL

from glacier_mapping.cli import main
from glacier_mapping.pipeline import NotebookFailed, run_pipeline

PARAMETERS = 'profile = "quick"\ndata_dir = ""\noutput_dir = ""\nseed = 0\nsize = 1\n'


def _notebook(path, *sources, parameters=PARAMETERS):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *[nbformat.v4.new_code_cell(s) for s in sources]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump({**MINIMAL, "name": "tiny", "seed": 5}))
    _notebook(
        notebooks / "01_first.ipynb",
        "from glacier_mapping.store import ArtifactStore\n"
        "from pathlib import Path\n"
        "store = ArtifactStore(Path(output_dir) / 'cache')\n"
        "art = store.get_or_create('numbers', {'seed': seed}, "
        "lambda d: (d / 'n.txt').write_text(str(seed)))\n"
        "again = store.get_or_create('numbers', {'seed': seed}, print)\n"
        "print(art.reused, again.reused)",
    )
    _notebook(notebooks / "02_second.ipynb", "assert size == 1, size\nresult = size * 2")
    return tmp_path, notebooks, profile


def test_runs_in_order_and_writes_manifest(project):
    root, notebooks, profile = project
    manifest = run_pipeline(str(profile), notebooks, root / "outputs", echo=lambda s: None)
    written = json.loads((root / "outputs" / "tiny" / "manifest.json").read_text())
    assert written["status"] == "ok" == manifest["status"]
    assert [nb["notebook"] for nb in written["notebooks"]] == ["01_first", "02_second"]
    first, second = written["notebooks"]
    assert first["parameters"]["seed"] == 5 == second["parameters"]["seed"]
    assert first["seconds"] > 0 and first["peak_memory_mb"] > 10
    # Built, then read again in the same notebook: one artifact, computed.
    assert first["artifacts_computed"] == 1 and first["artifacts_reused"] == 0
    assert {"keras", "numpy", "python"} <= set(written["versions"])
    assert (root / "outputs" / "tiny" / "notebooks" / "02_second.ipynb").is_file()
    # A second run with nothing changed reuses the artifact.
    again = run_pipeline(str(profile), notebooks, root / "outputs", echo=lambda s: None)
    assert again["notebooks"][0]["artifacts_reused"] == 1
    assert again["notebooks"][0]["artifacts_computed"] == 0


def test_failure_names_notebook_cell_and_error(project, capsys):
    root, notebooks, profile = project
    _notebook(notebooks / "03_broken.ipynb", "x = 1", "raise ValueError('bad band count')")
    _notebook(notebooks / "04_after.ipynb", "pass")
    code = main(["run", "--profile", str(profile), "--notebooks", str(notebooks),
                 "--output-dir", str(root / "outputs")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    tail = "\n".join(err[-3:])
    assert "03_broken.ipynb" in tail and "cell 3" in tail and "ValueError: bad band count" in tail
    assert "raise ValueError('bad band count')" in tail
    executed = root / "outputs" / "tiny" / "notebooks"
    assert (executed / "03_broken.failed.ipynb").is_file()
    assert not (executed / "03_broken.ipynb").exists()
    assert not (executed / "04_after.ipynb").exists()
    manifest = json.loads((root / "outputs" / "tiny" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["notebooks"][-1]["notebook"] == "03_broken"


def test_only_runs_selected_and_merges_manifest(project):
    root, notebooks, profile = project
    run_pipeline(str(profile), notebooks, root / "outputs", echo=lambda s: None)
    manifest = run_pipeline(str(profile), notebooks, root / "outputs", only=["02"],
                            echo=lambda s: None)
    assert [nb["notebook"] for nb in manifest["notebooks"]] == ["01_first", "02_second"]
    with pytest.raises(ValueError, match="no such notebook"):
        run_pipeline(str(profile), notebooks, root / "outputs", only=["09"], echo=lambda s: None)


def test_undeclared_parameter_is_refused(project):
    root, notebooks, profile = project
    _notebook(notebooks / "04_no_seed.ipynb", "x = 1",
              parameters=PARAMETERS.replace("seed = 0\n", ""))
    with pytest.raises(ValueError, match="seed"):
        run_pipeline(str(profile), notebooks, root / "outputs", only=["04"], echo=lambda s: None)


def test_notebook_without_parameters_cell_is_refused(project):
    root, notebooks, profile = project
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, notebooks / "05_untagged.ipynb")
    with pytest.raises(ValueError, match="parameters"):
        run_pipeline(str(profile), notebooks, root / "outputs", only=["05"], echo=lambda s: None)


def test_notebook_failed_is_raised_by_api(project):
    root, notebooks, profile = project
    _notebook(notebooks / "03_broken.ipynb", "1/0")
    with pytest.raises(NotebookFailed, match="ZeroDivisionError"):
        run_pipeline(str(profile), notebooks, root / "outputs", only=["03"], echo=lambda s: None)
