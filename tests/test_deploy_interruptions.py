"""``glacier-mapping deploy`` stopped by SIGTERM, SIGINT or SIGKILL: the previous set or nothing.

Each case runs the command in a child process that waits at one stage (the test hook
``GLACIER_MAPPING_TEST_PAUSE``) until it gets the signal. The children start together, so the
module pays for about one TensorFlow start-up per core.
"""

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_deploy import scene_arrays, tiny_model, write_raster

from glacier_mapping.calibration import TemperatureCalibrator
from glacier_mapping.cli import main
from glacier_mapping.data.scenes import OPTICAL_BANDS
from glacier_mapping.deploy import OUTPUT_FILES, PAUSE_ENV, read_summary

CLI = Path(sys.executable).with_name("glacier-mapping")
#: (stage the deploy waits at, signal sent there, whether --out holds a previous complete set)
CASES = [
    ("predict", signal.SIGTERM, True), ("predict", signal.SIGINT, False),
    ("cog", signal.SIGTERM, True), ("cog", signal.SIGINT, True),
    ("vectorise", signal.SIGTERM, True), ("vectorise", signal.SIGINT, True),
]
KILLED = ("vectorise", signal.SIGKILL, True)


@dataclass
class Run:
    """One interrupted child: where it wrote, what it printed and returned."""

    out: Path
    before: dict | None
    paused: str
    code: int
    stderr: str


def snapshot(folder):
    """Every file (bytes) and directory (None) under ``folder``."""
    return {path.relative_to(folder): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Scene files, a tiny model, a calibrator and one complete output set."""
    root = tmp_path_factory.mktemp("interrupt")
    optical, dem = scene_arrays(45, 52)
    argv = ["deploy", "--optical", str(write_raster(root / "optical.tif", optical)),
            "--bands", ",".join(OPTICAL_BANDS), "--dem", str(write_raster(root / "dem.tif", dem)),
            "--model", str(tiny_model(root / "model.keras")),
            "--calibrator", str(TemperatureCalibrator(temperature=1.7).save(root / "calib.json")),
            "--stride", "4", "--precision", "float32", "--no-progress"]
    assert main([*argv, "--out", str(root / "previous")]) == 0
    return root, argv


@pytest.fixture(scope="module")
def runs(scene):
    """Start every case's child at once, signal each where it waits, collect the results."""
    root, argv = scene
    children = {}
    try:
        for case in [*CASES, KILLED]:
            stage, signum, previous = case
            out = root / f"{stage}-{signum.name}"
            if previous:
                shutil.copytree(root / "previous", out)
            env = {**os.environ, PAUSE_ENV: stage}
            child = subprocess.Popen([str(CLI), *argv, "--out", str(out)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            children[case] = (child, out, snapshot(out) if previous else None)
        results = {}
        for case, (child, out, before) in children.items():
            paused = child.stdout.readline().strip()
            child.send_signal(case[1])
            _, stderr = child.communicate(timeout=120)
            results[case] = Run(out, before, paused, child.returncode, stderr)
        return results
    finally:
        for child, _, _ in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()


def rerun(scene, out):
    _, argv = scene
    assert main([*argv, "--out", str(out)]) == 0
    assert read_summary(out)["scene"] == "optical"
    assert sorted(path.name for path in out.iterdir()) == sorted(OUTPUT_FILES)  # none hidden


@pytest.mark.parametrize("case", CASES, ids=[f"{s}-{g.name}" for s, g, _ in CASES])
def test_interrupted_deploy_leaves_the_previous_set_or_nothing(scene, runs, case):
    stage, signum, previous = case
    run = runs[case]
    assert run.paused == f"paused at {stage}", run.stderr[-1500:]
    assert run.code == 128 + signum
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert f"interrupted by {signum.name}" in run.stderr
    if previous:
        assert snapshot(run.out) == run.before  # byte-identical, nothing added
    else:
        assert not run.out.exists()
    rerun(scene, run.out)


def test_rerun_removes_what_a_killed_deploy_left(scene, runs):
    run = runs[KILLED]
    assert run.paused == "paused at vectorise" and run.code == -signal.SIGKILL
    after = snapshot(run.out)
    assert {name: after[name] for name in run.before} == run.before  # previous set untouched
    assert [path.name for path in run.out.iterdir() if path.name.startswith(".staging-")]
    rerun(scene, run.out)
