"""Many scenes on Dask: same outputs as one by one, failures reported, manifest validation."""

import contextlib
import csv
import io
import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from dask.system import CPU_COUNT
from test_deploy import scene_arrays, tiny_model, write_raster

import glacier_mapping.deploy_many as deploy_many
from glacier_mapping.calibration import TemperatureCalibrator
from glacier_mapping.cli import main
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.deploy import DeployOptions, deploy_scene
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


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Scene files beside a manifest with relative paths: three good scenes, one missing a DEM."""
    root = tmp_path_factory.mktemp("many")
    (root / "scenes").mkdir()
    tiny_model(root / "model.keras")
    TemperatureCalibrator(temperature=1.7).save(root / "calib.json")
    rows = []
    for scene_id, (height, width, seed, extra) in GOOD.items():
        optical, dem = scene_arrays(height, width, seed)
        write_raster(root / "scenes" / f"{scene_id}_optical.tif", optical)
        write_raster(root / "scenes" / f"{scene_id}_dem.tif", dem)
        rows.append({"scene_id": scene_id, "optical": f"scenes/{scene_id}_optical.tif",
                     "bands": BANDS, "dem": f"scenes/{scene_id}_dem.tif",
                     "model": "model.keras", **extra})
    rows.append({"scene_id": "broken", "optical": "scenes/alpha_optical.tif", "bands": BANDS,
                 "dem": "scenes/no_such_dem.tif", "model": "model.keras"})
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


def test_failed_scene_is_reported_and_others_succeed(run):
    assert run["code"] == 1
    summary = run["summary"]
    assert (summary["scenes"], summary["succeeded"], summary["failed"]) == (4, 3, 1)
    broken = run["records"]["broken"]
    assert broken["status"] == "failed" and broken["line"] == 5
    assert "no_such_dem.tif does not exist" in broken["error"]
    assert "Traceback" not in broken["error"]
    assert "3 of 4 scene(s) succeeded" in run["stdout"]
    assert "FAILED broken (line 5)" in run["stderr"]
    with (run["out"] / SUMMARY_CSV).open(newline="") as handle:
        rows = {row["scene_id"]: row for row in csv.DictReader(handle)}
    assert [row["status"] for row in rows.values()] == ["ok", "ok", "ok", "failed"]
    assert rows["alpha"]["glacier_class"].endswith("alpha/glacier_class.tif")
    assert float(rows["beta"]["seconds"]) > 0 and rows["alpha"]["error"] == ""
    assert "does not exist" in rows["broken"]["error"]
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
    assert [job.scene_id for job in jobs] == [*GOOD, "broken"]
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
    ([GOOD_ROW, {**GOOD_ROW, "scene_id": "b", "optical": ""}],
     r"line 3: required column\(s\) \['optical'\] are empty"),
    ([{**GOOD_ROW, "stride": "half"}], r"line 2, column 'stride': .*invalid int value: 'half'"),
    ([{**GOOD_ROW, "precision": "half"}], r"line 2, column 'precision': .*invalid choice"),
    ([{**GOOD_ROW, "tta": "maybe"}], r"line 2, column 'tta': 'maybe' is not true/false"),
    ([GOOD_ROW, GOOD_ROW], r"line 3, column 'scene_id': 'a' already appears on line 2"),
    ([GOOD_ROW, {**GOOD_ROW, "scene_id": "b", "out": "a"}],
     r"line 3, column 'out': .* is also the output of line 2"),
    ([{**GOOD_ROW, "scene_id": "../up"}], r"line 2, column 'scene_id': '../up' must be"),
])
def test_manifest_errors_name_file_line_and_column(tmp_path, rows, pattern):
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    with pytest.raises(ManifestError, match=r"bad\.csv, " + pattern):
        read_manifest(manifest)


def test_manifest_file_level_errors(tmp_path):
    with pytest.raises(ManifestError, match=r"missing\.csv cannot be read"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match=r"empty\.csv is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("scene_id,optical,bands,model\n")
    with pytest.raises(ManifestError, match=r"header\.csv lists no scenes"):
        read_manifest(tmp_path / "header.csv")
    (tmp_path / "extra.csv").write_text("scene_id,optical,bands,model\na,a.tif,red,m.keras,x\n")
    with pytest.raises(ManifestError, match=r"extra\.csv, line 2: more values than columns"):
        read_manifest(tmp_path / "extra.csv")


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
