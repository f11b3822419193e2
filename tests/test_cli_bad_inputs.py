"""Bad input on the command line: exit code 2, one line naming the file or option, no traceback,
nothing left behind.

Every case runs ``glacier-mapping`` in a child process, the children two at a time (one per
core). Cases that fail before any work (argument parsing, the runner's and the importer's
checks) share a child that calls the command line's ``main`` once per case; a deploy case gets
a child of its own.
"""

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import nbformat
import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin
from test_deploy import CRS, TRANSFORM, scene_arrays, tiny_model

from conftest import REPO
from glacier_mapping.data.scenes import OPTICAL_BANDS
from glacier_mapping.data.tiles import make_tile, write_tiles

CLI = [sys.executable, "-m", "glacier_mapping.cli"]
BANDS = ",".join(OPTICAL_BANDS)
#: Runs ``main`` for each argv of a JSON list; prints each one's exit code and stderr as JSON.
SHARED_CHILD = """
import contextlib, io, json, sys, traceback
from glacier_mapping.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            traceback.print_exc()
            code = None
    results.append({"code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments, what stderr must name and what must not exist after."""

    argv: list[str]
    names: tuple[str, ...]
    absent: tuple[Path, ...] = ()
    any_of: tuple[str, ...] = ()
    pattern: str = ""
    shared: bool = False


def _geotiff(path, data, transform=TRANSFORM, crs=CRS):
    data = np.asarray(data, dtype="float32").reshape(-1, *np.shape(data)[-2:])
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype="float32", crs=crs,
                       transform=transform) as dataset:
        dataset.write(data)
    return path


def _tile(name):
    rng = np.random.default_rng(len(name))
    features = {"optical": rng.random((16, 16, 6), dtype=np.float32),
                "dem": rng.random((16, 16, 2), dtype=np.float32)}
    return make_tile(name, "ALP", features, (rng.random((16, 16)) > 0.5).astype(np.uint8),
                     (8.0, 8.1, 46.0, 46.1), 16)


def _benchmark(root, train_optical=16):
    root.mkdir()
    for index, split in enumerate(("train", "val", "test")):
        write_tiles(root / f"{split}.hdf5", [_tile(f"ALP-{index}-0"), _tile(f"ALP-{index}-1")])
    if train_optical != 16:
        with h5py.File(root / "train.hdf5", "a") as handle:
            group = handle["ALP-0-1"]
            del group["optical"]
            group.create_dataset("optical", data=np.zeros((train_optical, train_optical, 6)))
    return root


def _inputs(kit: Path) -> None:
    """Every input file of the cases, in ``kit``."""
    optical, dem = scene_arrays(45, 52)
    _geotiff(kit / "optical.tif", optical)
    _geotiff(kit / "dem.tif", dem)
    # A grid shifted by less than the scene is resampled onto the optical grid by design.
    _geotiff(kit / "dem_elsewhere.tif", dem, from_origin(510_000.0, 5_100_000.0, 30.0, 30.0))
    _geotiff(kit / "dem_no_crs.tif", dem, crs=None)
    _geotiff(kit / "dem_half.tif", dem[:, :26])
    small_optical, small_dem = scene_arrays(10, 12)
    _geotiff(kit / "small_optical.tif", small_optical)
    _geotiff(kit / "small_dem.tif", small_dem)
    _geotiff(kit / "nan_optical.tif", np.full_like(optical, np.nan))
    tiny_model(kit / "model.keras")
    tiny_model(kit / "region_model.keras", location_size=12)
    (kit / "garbage.keras").write_bytes(b"\x00garbage" * 100)
    for name, temperature in (("calib_abc.json", "abc"), ("calib_nan.json", math.nan)):
        (kit / name).write_text(json.dumps({"kind": "temperature", "temperature": temperature,
                                            "bounds": [0.05, 20.0]}))
    (kit / "region_bad.json").write_text('{"kind": "region_vector", "vector": [0.1, ')
    (kit / "out_is_a_file").write_text("keep me")
    (kit / "glavitu_global_weights.h5").write_text("not hdf5")
    (kit / "my_model.h5").write_text("any content")
    smoke = yaml.safe_load((REPO / "lib/glacier_mapping/profiles/smoke.yaml").read_text())
    smoke["training"]["bogus_key"] = 1
    (kit / "unknown_key.yaml").write_text(yaml.safe_dump(smoke))
    (kit / "bad.yaml").write_text("name: smoke\ndata: [ALP, HMA\nseed: 1\n")
    _benchmark(kit / "data_corrupt")
    (kit / "data_corrupt" / "train.hdf5").write_bytes(b"not an hdf5 file" * 64)
    _benchmark(kit / "data_small_optical", train_optical=10)
    (kit / "notebooks_bad").mkdir()
    untagged = nbformat.v4.new_notebook()
    untagged.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(untagged, kit / "notebooks_bad" / "01_untagged.ipynb")
    failed = kit / "failed_outputs" / "smoke"
    failed.mkdir(parents=True)
    (failed / "manifest.json").write_text(json.dumps(
        {"notebooks": [{"notebook": "01_data_preparation", "status": "failed"}]}))
    (kit / "no_bands.csv").write_text(f"scene_id,optical,model\na,{kit}/optical.tif,"
                                      f"{kit}/model.keras\n")


def _cases(kit: Path, out: Path) -> dict[str, Case]:
    """The bad inputs by name; ``out`` holds the outputs they must not create."""
    def run(name, *extra, names, **kwargs):
        target = out / name
        return Case(["run", *extra, "--output-dir", str(target)], names, (target,),
                    shared=True, **kwargs)

    def weights(name, path, names, **kwargs):
        target = out / name
        return Case(["import-weights", str(path), "--out", str(target)], names, (target,),
                    shared=True, **kwargs)

    def deploy(name, *extra, optical="optical.tif", bands=BANDS, dem="dem.tif",
               model="model.keras", names, target=None, **kwargs):
        target = target or out / name
        argv = ["deploy", "--optical", str(kit / optical), "--bands", bands,
                "--dem", str(kit / dem), "--model", str(kit / model), "--no-progress",
                "--out", str(target), *extra]
        return Case(argv, names, (target,) if target.parent == out else (), **kwargs)

    cases = {
        "run-unknown-profile": run("a", "--profile", "nonexistent", names=("'nonexistent'",)),
        "run-profile-missing": run("b", "--profile", str(kit / "missing.yaml"),
                                   names=(str(kit / "missing.yaml"),)),
        "run-profile-unknown-key": run("c", "--profile", str(kit / "unknown_key.yaml"),
                                       names=("unknown_key.yaml", "training.bogus_key")),
        "run-profile-bad-yaml": run("d", "--profile", str(kit / "bad.yaml"),
                                    names=("bad.yaml", "line 3")),
        "run-negative-seed": run("e", "--profile", "smoke", "--seed", "-1", names=("--seed",)),
        "run-seed-not-a-number": run("f", "--seed", "abc", names=("--seed",)),
        "run-only-no-such-notebook": run("g", "--profile", "smoke", "--only", "99",
                                         names=("--only", "99")),
        "run-notebook-without-parameters": run(
            "h", "--profile", "smoke", "--notebooks", str(kit / "notebooks_bad"),
            names=("01_untagged.ipynb", "parameters")),
        "run-data-dir-missing": run("i", "--profile", "smoke", "--data-dir",
                                    str(kit / "no_data"), names=(str(kit / "no_data"),)),
        "run-data-dir-corrupt-hdf5": run(
            "j", "--profile", "smoke", "--data-dir", str(kit / "data_corrupt"),
            names=(str(kit / "data_corrupt" / "train.hdf5"),)),
        "run-tile-10x10-optical": run(
            "k", "--profile", "smoke", "--data-dir", str(kit / "data_small_optical"),
            names=(str(kit / "data_small_optical" / "train.hdf5"), "ALP-0-1", "'optical'",
                   "(10, 10, 6)")),
        "build-book-nothing-run": Case(
            ["build-book", "--profile", "smoke", "--output-dir", str(out / "l")],
            (str(out / "l" / "smoke" / "manifest.json"), "glacier-mapping run"),
            (out / "l",), shared=True),
        "build-book-failed-notebook": Case(
            ["build-book", "--profile", "smoke", "--output-dir", str(kit / "failed_outputs")],
            ("01_data_preparation (failed)",), shared=True),
        "import-weights-missing-file": weights("m", kit / "absent_weights.h5",
                                               ("absent_weights.h5",)),
        "import-weights-not-hdf5": weights("n", kit / "glavitu_global_weights.h5",
                                           ("glavitu_global_weights.h5", "not an HDF5")),
        "import-weights-bad-name": weights("o", kit / "my_model.h5",
                                           ("my_model.h5", "<MODEL>_<STRATEGY>")),
        "import-weights-no-out": Case(["import-weights", str(kit / "my_model.h5")],
                                      ("--out",), shared=True),
        "deploy-unknown-precision": deploy("p", "--precision", "half", names=("--precision",),
                                           shared=True),
        "deploy-batch-size-not-a-number": deploy("q", "--batch-size", "x",
                                                 names=("--batch-size",), shared=True),
        "deploy-missing-optical": deploy("r", optical="no_such_optical.tif",
                                         names=("no_such_optical.tif",)),
        "deploy-band-count-mismatch": deploy("s", bands="blue,green,red,nir,swir1",
                                             names=("--bands",)),
        "deploy-misaligned-dem-grid": deploy("t", dem="dem_elsewhere.tif",
                                             names=("dem_elsewhere.tif",)),
        "deploy-dem-without-crs": deploy("J", dem="dem_no_crs.tif", names=("dem_no_crs.tif",)),
        "deploy-dem-covers-half": deploy("u", dem="dem_half.tif", names=("dem_half.tif",),
                                         pattern=r"\b50(\.0+)? ?%"),
        "deploy-garbage-model": deploy("v", model="garbage.keras", names=("garbage.keras",)),
        "deploy-missing-model": deploy("w", model="no_such_model.keras",
                                       names=("no_such_model.keras",)),
        "deploy-calibrator-temperature-abc": deploy(
            "x", "--calibrator", str(kit / "calib_abc.json"), names=("calib_abc.json",)),
        "deploy-calibrator-nan": deploy("y", "--calibrator", str(kit / "calib_nan.json"),
                                        names=("calib_nan.json",)),
        "deploy-region-vector-malformed": deploy(
            "z", "--region-vector", str(kit / "region_bad.json"), model="region_model.keras",
            names=("region_bad.json",)),
        "deploy-batch-size-0": deploy("A", "--batch-size", "0", names=("--batch-size",)),
        "deploy-stride-0": deploy("B", "--stride", "0", names=("--stride",)),
        "deploy-mc-passes-negative": deploy("C", "--mc-passes", "-1", names=("--mc-passes",)),
        "deploy-patch-size-not-the-models": deploy("D", "--patch-size", "24",
                                                   names=("--patch-size",)),
        "deploy-scene-smaller-than-a-patch": deploy(
            "E", optical="small_optical.tif", dem="small_dem.tif", names=(),
            any_of=("small_optical", "--patch-size")),
        "deploy-nan-only-optical": deploy("F", optical="nan_optical.tif",
                                          names=("nan_optical.tif",)),
        "deploy-out-is-a-file": deploy("G", target=kit / "out_is_a_file",
                                       names=(str(kit / "out_is_a_file"),)),
        "deploy-many-missing-manifest": Case(
            ["deploy-many", str(kit / "absent.csv"), "--out", str(out / "H")],
            ("absent.csv",), (out / "H",)),
        "deploy-many-manifest-without-bands": Case(
            ["deploy-many", str(kit / "no_bands.csv"), "--out", str(out / "I")],
            ("no_bands.csv", "bands"), (out / "I",)),
    }
    return cases


def _child(argvs, shared):
    """Exit code and stderr of each argv: one child for all (shared), else one child for one."""
    command = [sys.executable, "-c", SHARED_CHILD, json.dumps(argvs)] if shared else [
        *CLI, *argvs[0]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    if not shared:
        return [{"code": done.returncode, "stderr": done.stderr}]
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tree(root):
    return sorted((str(path.relative_to(root)), path.is_dir() or path.read_bytes())
                  for path in root.rglob("*"))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run; the kit and outputs roots are checked for leftovers afterwards."""
    root = tmp_path_factory.mktemp("bad_inputs")
    kit, out = root / "kit", root / "out"
    kit.mkdir()
    out.mkdir()
    _inputs(kit)
    cases = _cases(kit, out)
    before = _tree(kit)
    shared = [name for name, case in cases.items() if case.shared]
    jobs = [(shared, True)] + [([name], False) for name in cases if name not in shared]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = pool.map(lambda job: _child([cases[n].argv for n in job[0]], job[1]), jobs)
        by_name = {name: result for (names, _), found in zip(jobs, results, strict=True)
                   for name, result in zip(names, found, strict=True)}
    return {"cases": cases, "results": by_name, "kit_unchanged": _tree(kit) == before,
            "out": sorted(path.name for path in out.iterdir())}


CASE_NAMES = sorted(_cases(Path("/kit"), Path("/out")))


def test_there_are_enough_cases():
    assert len(CASE_NAMES) >= 30


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_refused_in_one_line(outcomes, name):
    case, result = outcomes["cases"][name], outcomes["results"][name]
    err = result["stderr"]
    assert result["code"] == 2, err
    assert "Traceback" not in err, err
    command = case.argv[0]
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"glacier-mapping {command}: error: "), err
    if case.shared:
        assert err.count("\n") == 1, err
    for text in case.names:
        assert text in err, (text, err)
    if case.any_of:
        assert any(text in err for text in case.any_of), (case.any_of, err)
    if case.pattern:
        assert re.search(case.pattern, err), (case.pattern, err)
    for path in case.absent:
        assert not path.exists(), f"{path} was left behind"


def test_inputs_are_left_as_they_were_and_no_output_appears(outcomes):
    assert outcomes["kit_unchanged"]
    assert outcomes["out"] == []
