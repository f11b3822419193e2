"""The Papermill runner, tested on small notebooks generated here (not the science chapters)."""

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
import yaml
from test_config import MINIMAL
from test_workflow import _write_benchmark

from glacier_mapping.cli import main
from glacier_mapping.data.tiles import TileFormatError
from glacier_mapping.pipeline import NotebookFailed, run_pipeline
from glacier_mapping.workflow import BENCHMARK_CHECK

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
    assert not (root / "outputs").exists()  # refused before anything is written


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


def test_relative_profile_path_reaches_the_notebooks_whole(project, monkeypatch):
    root, notebooks, _ = project
    monkeypatch.chdir(root)
    manifest = run_pipeline("tiny.yaml", notebooks, "outputs", only=["02"], echo=lambda s: None)
    assert manifest["notebooks"][0]["parameters"]["profile"] == str(root / "tiny.yaml")


def test_data_dir_is_checked_before_anything_runs(project):
    root, notebooks, profile = project
    bench = _write_benchmark(root / "bench").root
    run_pipeline(str(profile), notebooks, root / "outputs", data_dir=bench, only=["02"],
                 echo=lambda s: None)
    assert (root / "outputs" / "tiny" / "cache" / BENCHMARK_CHECK).is_dir()
    (bench / "val.hdf5").write_bytes(b"garbage")
    with pytest.raises(TileFormatError, match=r"val.hdf5: not a readable HDF5"):
        run_pipeline(str(profile), notebooks, root / "elsewhere", data_dir=bench,
                     echo=lambda s: None)
    assert not (root / "elsewhere").exists()


def test_ctrl_c_stops_with_one_line_and_exit_130(project):
    root, notebooks, profile = project
    started = root / "started"
    _notebook(notebooks / "03_slow.ipynb",
              f"from pathlib import Path\nPath({str(started)!r}).touch()\n"
              "import time\ntime.sleep(120)")
    # A child inherits an ignored SIGINT (a shell's background job, or a test before this one
    # that left it ignored in this process): start it with Python's own Ctrl-C handling, as a
    # terminal would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "glacier_mapping.cli", "run", "--profile", str(profile),
             "--notebooks", str(notebooks), "--output-dir", str(root / "outputs"),
             "--only", "03"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 120
    while not started.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err == "glacier-mapping run: interrupted (Ctrl-C).\n"
    manifest = json.loads((root / "outputs" / "tiny" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    executed = root / "outputs" / "tiny" / "notebooks"
    assert (executed / "03_slow.failed.ipynb").is_file()
    assert not (executed / "03_slow.ipynb").exists()


def test_a_dead_kernel_is_a_failed_notebook(project):
    root, notebooks, profile = project
    _notebook(notebooks / "03_killed.ipynb",
              "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(NotebookFailed, match=r"03_killed.ipynb: the kernel died"):
        run_pipeline(str(profile), notebooks, root / "outputs", only=["03"], echo=lambda s: None)
    manifest = json.loads((root / "outputs" / "tiny" / "manifest.json").read_text())
    assert manifest["notebooks"][-1]["status"] == "failed"


def test_kernels_are_shut_down_without_an_interrupt(project):
    """An interrupt at shutdown can hit a kernel finishing its last message (noise on stderr).

    The interrupt goes to the kernel's process group, so a process the notebook started
    (as a training worker would be) sees it.
    """
    root, notebooks, profile = project
    marker, pid = root / "interrupted", root / "pid"
    child = (f"import os, pathlib, signal, time\n"
             f"signal.signal(signal.SIGINT, lambda *a: pathlib.Path({str(marker)!r}).touch())\n"
             f"pathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\ntime.sleep(60)")
    _notebook(notebooks / "03_child.ipynb",
              f"import subprocess, sys, time\nfrom pathlib import Path\n"
              f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              f"while not Path({str(pid)!r}).exists():\n    time.sleep(0.05)")
    run_pipeline(str(profile), notebooks, root / "outputs", only=["03"], echo=lambda s: None)
    time.sleep(1)
    try:
        os.kill(int(pid.read_text()), signal.SIGKILL)
    except ProcessLookupError:
        pass  # a kernel slow to stop is killed with its process group: no interrupt either
    assert not marker.exists()
