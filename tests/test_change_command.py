"""``glacier-mapping change``: two ``deploy --inventory`` outputs to change files, and refusals."""

import json
import re
import shutil

import geopandas as gpd
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from test_deploy import tiny_model
from test_deploy_inventory import (
    IDS,
    ice_mask,
    write_calibrator,
    write_outlines,
    write_scene,
)

import glacier_mapping.change_command as change_command
from glacier_mapping.change import glacier_change
from glacier_mapping.cli import main
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.deploy import InventoryOptions, deploy_scene, read_summary


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Deployments of 2000 and 2020: B shrinks, C's ice and a blob vanish, a blob moves, one
    appears; and a deployment of 2020 without ``--inventory``."""
    root = tmp_path_factory.mktemp("change")
    model = tiny_model(root / "model.keras")
    calibrator = write_calibrator(root / "calibrator.json")
    outlines = write_outlines(root / "rgi6.gpkg")
    scenes = {"before": ("2000-08-01", ice_mask(blobs=("far", "south"), third=True)),
              "after": ("2020-08-01", ice_mask(shrink=6, blobs=("moved", "corner")))}
    folders = {}
    for name, (date, ice) in scenes.items():
        (root / name).mkdir()
        optical, dem = write_scene(root / name, ice)
        with SceneSource(optical, OPTICAL_BANDS, dem=dem, date=date) as source:
            folders[name] = root / name / "out"
            deploy_scene(source, model, folders[name], calibrator_path=calibrator,
                         inventory=InventoryOptions(outlines), progress=False)
            if name == "after":
                folders["plain"] = root / name / "plain"
                deploy_scene(source, model, folders["plain"], calibrator_path=calibrator,
                             progress=False)
    return folders


@pytest.fixture(scope="module")
def compared(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("compared") / "out"
    assert main(["change", str(pair["before"]), str(pair["after"]), "--out", str(out)]) == 0
    return out


def classes(folder):
    with rasterio.open(folder / "glacier_class.tif") as raster:
        return raster.read(1)


def layer(folder):
    return gpd.read_file(folder / "glaciers.gpkg", layer="glaciers")


def test_change_finds_gained_lost_appeared_and_vanished(pair, compared):
    assert sorted(path.name for path in compared.iterdir()) == [
        "change.csv", "change.gpkg", "change.tif", "change_summary.json"]
    summary = json.loads((compared / "change_summary.json").read_text())
    assert summary["before"]["date"] == "2000-08-01" and summary["after"]["date"] == "2020-08-01"
    assert summary["days"] == 7305
    assert summary["glaciers"] == {"matched": 3, "appeared": 1, "vanished": 2}
    was, now = classes(pair["before"]) == 1, classes(pair["after"]) == 1
    assert summary["pixels"]["gained"] == int((~was & now).sum()) > 0
    assert summary["pixels"]["lost"] == int((was & ~now).sum()) > 0
    assert summary["pixels"]["stable_glacier"] == int((was & now).sum())
    assert summary["pixels"]["nodata"] == 0
    assert summary["areas_km2"]["lost"] > summary["areas_km2"]["gained"] > 0
    with rasterio.open(compared / "change.tif") as raster:
        codes = raster.read(1)
    assert (codes[~was & now] == 2).all() and (codes[was & ~now] == 3).all()
    first, second = (read_summary(pair[name])["inventory"] for name in ("before", "after"))
    assert summary["expected_change_km2"] == pytest.approx(
        second["expected_area_km2"] - first["expected_area_km2"])
    assert summary["change_low_km2"] < summary["expected_change_km2"] < summary["change_high_km2"]
    assert summary["area_change_km2"] < 0 and summary["notes"] == []


def test_change_table_and_layer(pair, compared):
    before, after = layer(pair["before"]), layer(pair["after"])
    expected = glacier_change(before, after)
    text = {"rgi_id": "", "glac_name": "", "matched_by": ""}
    table = pd.read_csv(compared / "change.csv", dtype=dict.fromkeys(text, str)).fillna(text)
    assert list(table.columns) == [*expected.columns, "date_before", "date_after"]
    assert (table["date_before"] == "2000-08-01").all()
    pd.testing.assert_frame_equal(table[expected.columns], expected, check_dtype=False)
    by_status = table.groupby(["status", "matched_by"]).size().to_dict()
    assert by_status == {("matched", "rgi_id"): 2, ("matched", "overlap"): 1,
                         ("vanished", ""): 2, ("appeared", ""): 1}
    assert set(table.loc[table["status"] == "vanished", "rgi_id"]) == {IDS[2], ""}
    shrunk = table.set_index("rgi_id").loc[IDS[1]]
    assert shrunk["area_change_km2"] < 0 and shrunk["area_after_km2"] > 0
    changes = gpd.read_file(compared / "change.gpkg", layer="change")
    assert changes.crs.to_epsg() == 4326 and len(changes) == len(table)
    for row, geometry in zip(changes.itertuples(), changes.geometry, strict=True):
        source = before if row.status == "vanished" else after
        area = row.area_before_km2 if row.status == "vanished" else row.area_after_km2
        match = source[source["area_km2"] == area]
        assert len(match) == 1 and match.geometry.iloc[0].equals(geometry)


def _copy(folder, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def _incomplete(folder):
    (folder / "confidence.tif").unlink()
    return folder


def _edit_summary(folder, **changes):
    path = folder / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def _shifted_grid(folder):
    path = folder / "glacier_class.tif"
    with rasterio.open(path) as raster:
        data, profile = raster.read(), raster.profile
    profile.update(driver="GTiff", transform=from_origin(500_030.0, 5_100_000.0, 30.0, 30.0))
    path.unlink()
    with rasterio.open(path, "w", **profile) as raster:
        raster.write(data)
    return folder


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda p, t: (_incomplete(_copy(p["before"], t, "a")), p["after"]),
     r"a holds no complete deployment \(confidence.tif missing\); run glacier-mapping "
           r"deploy --out"),
    (lambda p, t: (p["before"], p["plain"]),
     r"plain/glaciers.gpkg lacks the inventory column\(s\) \['rgi_id', .*: .*plain was "
     r"deployed without --inventory; redeploy it with glacier-mapping deploy --inventory"),
    (lambda p, t: (_edit_summary(_copy(p["before"], t, "a"), date=None), p["after"]),
     r"a/summary.json has no acquisition date; redeploy .* --date YYYY-MM-DD\.$"),
    (lambda p, t: (p["after"], p["before"]),
     r"error: the second deployment, .*before/out \(2000-08-01\), is not after the first, "
     r".*after/out \(2020-08-01\); pass the earlier deployment first\.$"),
    (lambda p, t: (_edit_summary(_copy(p["before"], t, "a"), date="2020-08-01"), p["after"]),
     r"is not after"),
    (lambda p, t: (p["before"], _shifted_grid(_copy(p["after"], t, "b"))),
     r"glacier_class.tif .* are on different grids; warp one onto the other's grid"),
])
def test_bad_inputs_are_refused_in_one_line_creating_nothing(pair, tmp_path, capsys, make,
                                                            pattern):
    first, second = make(pair, tmp_path)
    out = tmp_path / "new" / "out"
    assert main(["change", str(first), str(second), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("glacier-mapping change: error: ")
    assert re.search(pattern, error), error
    assert not (tmp_path / "new").exists()


def test_ctrl_c_leaves_nothing(pair, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(change_command, "glacier_change", interrupted)
    out = tmp_path / "new" / "out"
    assert main(["change", str(pair["before"]), str(pair["after"]), "--out", str(out)]) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
