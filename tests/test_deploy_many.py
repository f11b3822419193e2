"""Many scenes on Dask: same outputs as one by one, failures reported, manifest validation."""

import collections
import contextlib
import csv
import errno
import io
import json
import re
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from dask.system import CPU_COUNT
from distributed import LocalCluster
from test_deploy import scene_arrays, tiny_model, write_raster

import glacier_mapping.deploy as deploy
import glacier_mapping.deploy_many as deploy_many
from glacier_mapping.calibration import TemperatureCalibrator
from glacier_mapping.cli import main
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneError, SceneSource
from glacier_mapping.deploy import DeploymentError, DeployOptions, deploy_scene
from glacier_mapping.deploy_many import (
    SUMMARY_CSV,
    SUMMARY_JSON,
    ManifestError,
    parse_scheduler,
    read_manifest,
)

BANDS = ",".join(OPTICAL_BANDS)
#: Scenes that must succeed: id -> (height, width, seed, extra manifest columns).
GOOD = {
    "alpha": (45, 52, 0, {}),
    "beta": (40, 61, 1, {"tta": "true", "stride": "5"}),
    "gamma": (33, 36, 2, {"calibrator": "calib.json", "batch_size": "3",
                          "precision": "float32"}),
}


def write_manifest(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


#: Scenes that must fail alone: id -> (extra manifest columns, what the error names, its fix
#: as a pattern).
BAD = {
    "broken": ({"dem": "scenes/no_such_dem.tif"}, "no_such_dem.tif does not exist",
               r"check the path"),
    "badvalue": ({"stride": "abc"}, "manifest.csv, line 6, column 'stride': invalid int value: "
                 "'abc'", r"leave the cell empty for the default"),
    "badcalib": ({"calibrator": "bad_calib.json"}, "bad_calib.json", r"(?i)\bfix\b|\bsaved? "),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Scene files beside a manifest with relative paths: three good scenes, then bad rows."""
    root = tmp_path_factory.mktemp("many")
    (root / "scenes").mkdir()
    tiny_model(root / "model.keras")
    TemperatureCalibrator(temperature=1.7).save(root / "calib.json")
    (root / "bad_calib.json").write_text('{"kind": "temperature", "temperature": "warm", '
                                         '"bounds": [0.05, 20.0]}')
    rows = []
    for scene_id, (height, width, seed, extra) in GOOD.items():
        optical, dem = scene_arrays(height, width, seed)
        write_raster(root / "scenes" / f"{scene_id}_optical.tif", optical)
        write_raster(root / "scenes" / f"{scene_id}_dem.tif", dem)
        rows.append({"scene_id": scene_id, "optical": f"scenes/{scene_id}_optical.tif",
                     "bands": BANDS, "dem": f"scenes/{scene_id}_dem.tif",
                     "model": "model.keras", **extra})
    rows += [{"scene_id": scene_id, "optical": "scenes/alpha_optical.tif", "bands": BANDS,
              "dem": "scenes/alpha_dem.tif", "model": "model.keras", **extra}
             for scene_id, (extra, _, _) in BAD.items()]
    return root, write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def run(project):
    """``glacier-mapping deploy-many`` on a LocalCluster of two worker processes."""
    root, manifest = project
    out = root / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["deploy-many", str(manifest), "--scheduler", "local:2", "--retries", "1",
                     "--out", str(out)])
    summary = json.loads((out / SUMMARY_JSON).read_text())
    return {"code": code, "out": out, "summary": summary, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "records": {r["scene_id"]: r for r in summary["results"]}}


def read_band(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def test_results_equal_one_by_one(project, run, tmp_path):
    root, _ = project
    for scene_id, (_, _, _, extra) in GOOD.items():
        record = run["records"][scene_id]
        assert record["status"] == "ok", record["error"]
        assert record["out_dir"] == str(run["out"] / scene_id)
        with SceneSource(root / "scenes" / f"{scene_id}_optical.tif", BANDS,
                         dem=root / "scenes" / f"{scene_id}_dem.tif", name=scene_id) as source:
            options = DeployOptions(tta="tta" in extra,
                                    stride=int(extra.get("stride", 0)) or None,
                                    batch_size=int(extra.get("batch_size", 8)),
                                    precision=extra.get("precision", "auto"))
            alone = deploy_scene(
                source, root / "model.keras", tmp_path / scene_id, options, progress=False,
                calibrator_path=root / extra["calibrator"] if "calibrator" in extra else None,
            )
        np.testing.assert_allclose(read_band(record["outputs"]["confidence.tif"]),
                                   read_band(alone.outputs["confidence.tif"]), rtol=0,
                                   atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(read_band(record["outputs"]["glacier_class.tif"]),
                                      read_band(alone.outputs["glacier_class.tif"]))
        polygons = gpd.read_file(record["outputs"]["glaciers.gpkg"])
        assert len(polygons) == alone.polygon_count == record["polygon_count"] > 0
        assert record["glacier_area_km2"] == pytest.approx(alone.glacier_area_km2)
        assert (record["estimated_iou"] is None) == ("calibrator" not in extra)
        saved = json.loads((run["out"] / scene_id / "summary.json").read_text())
        assert saved["scene"] == scene_id and saved["parameters"]["tta"] == ("tta" in extra)
        assert saved["parameters"]["precision"] == alone.parameters["precision"]


def test_bad_rows_fail_alone_and_name_scene_file_and_fix(run):
    assert run["code"] == 1
    summary = run["summary"]
    assert (summary["scenes"], summary["succeeded"], summary["failed"]) == (6, 3, 3)
    failed = [line for line in run["stderr"].splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(BAD)
    for line, (scene_id, (_, names, fix)) in enumerate(BAD.items(), start=5):
        record = run["records"][scene_id]
        assert record["status"] == "failed" and record["line"] == line
        assert names in record["error"] and re.search(fix, record["error"])
        assert any(f"FAILED {scene_id} (line {line}): " in text and names in text
                   for text in failed)
    assert run["records"]["badvalue"]["seconds"] is None  # refused before it ran
    assert "Traceback" not in run["stderr"] + run["stdout"]
    assert "3 of 6 scene(s) succeeded" in run["stdout"]
    with (run["out"] / SUMMARY_CSV).open(newline="") as handle:
        rows = {row["scene_id"]: row for row in csv.DictReader(handle)}
    assert [row["status"] for row in rows.values()] == ["ok"] * 3 + ["failed"] * 3
    assert rows["alpha"]["glacier_class"].endswith("alpha/glacier_class.tif")
    assert float(rows["beta"]["seconds"]) > 0 and rows["alpha"]["error"] == ""
    assert "does not exist" in rows["broken"]["error"]
    assert "column 'stride'" in rows["badvalue"]["error"]
    assert not [p for p in run["out"].iterdir() if p.name.startswith(".")]  # atomic writes


def test_workers_share_cores_and_reuse_the_model(run):
    records = [run["records"][scene_id] for scene_id in GOOD]
    assert run["summary"]["workers"] == 2
    assert len({record["worker"] for record in records}) <= 2
    # Three scenes on two single-threaded workers: one worker ran two, loading the model once.
    assert any(record["model_reused"] for record in records)
    assert {record["tensorflow_threads"] for record in records} == {max(1, CPU_COUNT // 2)}


def test_manifest_paths_are_relative_to_its_folder(project, tmp_path, monkeypatch):
    root, manifest = project
    monkeypatch.chdir(tmp_path)
    jobs = read_manifest(manifest, "outputs")
    assert [job.scene_id for job in jobs] == [*GOOD, *BAD]
    assert [job.error is None for job in jobs] == [True] * 4 + [False, True]
    alpha = jobs[0].options
    assert alpha.optical == [root / "scenes" / "alpha_optical.tif"]
    assert alpha.model == root / "model.keras" and alpha.name == "alpha"
    assert alpha.out == tmp_path / "outputs" / "alpha"
    assert jobs[1].options.tta is True and jobs[1].options.stride == 5
    assert jobs[2].options.calibrator == root / "calib.json"
    assert jobs[2].options.precision == "float32" and jobs[0].options.precision == "auto"


GOOD_ROW = {"scene_id": "a", "optical": "a.tif", "bands": BANDS, "model": "m.keras"}


@pytest.mark.parametrize(("rows", "pattern"), [
    ([{**GOOD_ROW, "sar": "x.tif"}], r"line 1: unknown column\(s\) \['sar'\]; allowed"),
    ([{k: v for k, v in GOOD_ROW.items() if k != "model"}],
     r"line 1: required column\(s\) \['model'\] are missing"),
])
def test_header_errors_refuse_the_manifest(tmp_path, rows, pattern):
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    with pytest.raises(ManifestError, match=r"bad\.csv, " + pattern):
        read_manifest(manifest)


@pytest.mark.parametrize(("rows", "pattern"), [
    ([GOOD_ROW, {**GOOD_ROW, "scene_id": "b", "optical": ""}],
     r"line 3: required column\(s\) \['optical'\] are empty"),
    ([{**GOOD_ROW, "stride": "half"}],
     r"line 2, column 'stride': invalid int value: 'half'; correct it or leave the cell empty"),
    ([{**GOOD_ROW, "precision": "half"}], r"line 2, column 'precision': invalid choice"),
    ([{**GOOD_ROW, "tta": "maybe"}], r"line 2, column 'tta': 'maybe' is not true/false"),
    ([GOOD_ROW, GOOD_ROW], r"line 3, column 'scene_id': 'a' already appears on line 2"),
    ([GOOD_ROW, {**GOOD_ROW, "scene_id": "b", "out": "a"}],
     r"line 3, column 'out': .* is also the output of line 2"),
    ([{**GOOD_ROW, "scene_id": "../up"}], r"line 2, column 'scene_id': '../up' must be"),
])
def test_row_errors_fail_their_row_only(tmp_path, rows, pattern):
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    jobs = read_manifest(manifest)
    assert len(jobs) == len(rows)
    assert all(job.error is None for job in jobs[:-1])
    assert re.match(r".*bad\.csv, " + pattern, jobs[-1].error) and jobs[-1].options is None


def test_only_bad_rows_need_no_scheduler(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", [{**GOOD_ROW, "batch_size": "many"}])
    assert main(["deploy-many", str(manifest), "--scheduler", "tcp://127.0.0.1:9"]) == 1
    assert "FAILED a (line 2): " in capsys.readouterr().err
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["failed"] == 1


def test_manifest_file_level_errors(tmp_path):
    with pytest.raises(ManifestError, match=r"missing\.csv cannot be read"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match=r"empty\.csv is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("scene_id,optical,bands,model\n")
    with pytest.raises(ManifestError, match=r"header\.csv lists no scenes"):
        read_manifest(tmp_path / "header.csv")
    (tmp_path / "extra.csv").write_text("scene_id,optical,bands,model\na,a.tif,red,m.keras,x\n"
                                        "b,b.tif,red,m.keras\n")
    extra, good = read_manifest(tmp_path / "extra.csv")
    assert re.match(r".*extra\.csv, line 2: more values than columns", extra.error)
    assert good.error is None and good.scene_id == "b"


def test_scheduler_and_retries_options(project, capsys, monkeypatch):
    assert parse_scheduler("local") == CPU_COUNT
    assert parse_scheduler("local:3") == 3
    assert parse_scheduler("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local:x", "cluster"):
        with pytest.raises(ManifestError, match=r"--scheduler must be 'local', 'local:N'"):
            parse_scheduler(bad)
    _, manifest = project
    assert main(["deploy-many", str(manifest), "--retries", "-1"]) == 2
    assert "--retries must be >= 0" in capsys.readouterr().err
    monkeypatch.setattr(deploy_many, "CONNECT_TIMEOUT", "1s")
    assert main(["deploy-many", str(manifest), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_plain_remote_scheduler_warns_once(project, capsys, caplog, monkeypatch):
    assert deploy_many._is_plain_remote("tcp://10.0.0.5:8786")
    assert deploy_many._is_plain_remote("tcp://scheduler.example.org:8786")
    for address in ("tcp://127.0.0.1:8786", "tcp://localhost:8786", "tcp://[::1]:8786",
                    "tls://10.0.0.5:8786"):
        assert not deploy_many._is_plain_remote(address), address
    _, manifest = project
    monkeypatch.setattr(deploy_many, "CONNECT_TIMEOUT", "1s")
    assert main(["deploy-many", str(manifest), "--scheduler", "tcp://192.0.2.1:8786"]) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "runs any code sent to it" in warnings[0]
    assert "\n" not in warnings[0]
    assert "Cannot reach the Dask scheduler at tcp://192.0.2.1:8786" in capsys.readouterr().err


#: Scene -> error of its n-th attempt (None: it succeeds).
ATTEMPTS = {
    "input": lambda n: DeploymentError("Model file m.keras does not exist; pass --model."),
    "scene": lambda n: SceneError("a.tif: cannot be read as a raster; check it."),
    "missing": lambda n: FileNotFoundError("No calibrator file at c.json; fit one."),
    "flaky": lambda n: OSError(errno.EIO, "Input/output error", "/nfs/a.tif"),
    "recovers": lambda n: OSError(errno.ESTALE, "Stale file handle") if n == 1 else None,
}


def test_input_errors_run_once_and_transient_ones_are_retried(tmp_path, monkeypatch, capsys):
    calls = collections.Counter()

    def fake_deploy(options):
        calls[options.name] += 1
        error = ATTEMPTS[options.name](calls[options.name])
        if error is not None:
            raise error
        return SimpleNamespace(out_dir=str(options.out), outputs={}, glacier_area_km2=0.0,
                               polygon_count=0, estimated_iou=None)

    monkeypatch.setattr(deploy_many, "run_deploy", fake_deploy)  # workers share this process
    monkeypatch.setattr(deploy_many, "_limit_tensorflow_threads", lambda threads: None)
    monkeypatch.setattr(deploy, "_load_model", deploy._load_model)  # restored afterwards
    manifest = write_manifest(tmp_path / "m.csv", [{**GOOD_ROW, "scene_id": scene_id}
                                                   for scene_id in ATTEMPTS])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        code = main(["deploy-many", str(manifest), "--scheduler", cluster.scheduler_address,
                     "--retries", "2"])
    assert code == 1
    assert calls == {"input": 1, "scene": 1, "missing": 1, "flaky": 3, "recovers": 2}
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    records = {record["scene_id"]: record for record in summary["results"]}
    assert [r["status"] for r in records.values()] == ["failed"] * 4 + ["ok"]
    assert records["input"]["error"] == "Model file m.keras does not exist; pass --model."
    assert "/nfs/a.tif" in records["flaky"]["error"]
    assert "failed 3 attempt(s)" in records["flaky"]["error"]
    assert "Traceback" not in capsys.readouterr().err


def test_product_and_quality_columns(tmp_path):
    rows = [{**GOOD_ROW, "bands": "", "product": "sentinel2-l2a", "quality": "scl.tif",
             "optical_offset": ""},
            {**GOOD_ROW, "scene_id": "b", "product": "", "quality": "",
             "optical_offset": "-0.1"}]
    jobs = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert [job.error for job in jobs] == [None, None]
    first, second = jobs[0].options, jobs[1].options
    assert first.product == "sentinel2-l2a" and first.bands is None
    assert first.quality == tmp_path / "scl.tif"  # relative to the manifest
    assert second.product is None and second.optical_offset == -0.1
    assert second.bands == BANDS
