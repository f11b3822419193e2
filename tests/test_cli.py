"""The command line: sub-commands exist and import-weights writes a loadable model."""

import json

import pytest

from conftest import SHARED
from glacier_mapping.cli import build_parser, main

REFERENCE = SHARED / "reference" / "glavitu_p64_weights.h5"


def test_subcommands():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"run", "build-book", "import-weights", "deploy"} <= set(commands)


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"reference weights absent: {REFERENCE}")
def test_import_weights_writes_model_and_card(tmp_path):
    assert main(["import-weights", str(REFERENCE), "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["sensors"] == ["optical", "dem"] and card["patch_size"] == 64
    assert (tmp_path / "model.keras").stat().st_size > 1_000_000


def test_import_weights_refuses_other_files(tmp_path, capsys):
    bogus = tmp_path / "deeplab_global_weights.h5"
    import h5py

    with h5py.File(bogus, "w") as handle:
        handle.create_group("backbone")
    assert main(["import-weights", str(bogus), "--out", str(tmp_path / "out")]) == 2
    assert "FAILED" in capsys.readouterr().err


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"reference weights absent: {REFERENCE}")
def test_deploy_accepts_an_imported_model(tmp_path):
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "height": 80, "width": 96, "crs": "EPSG:32632",
               "transform": from_origin(400000, 5100000, 30, 30), "dtype": "float32"}
    rng = np.random.default_rng(0)
    with rasterio.open(tmp_path / "optical.tif", "w", count=6, **profile) as dst:
        dst.write(rng.uniform(0, 0.8, (6, 80, 96)).astype("float32"))
    with rasterio.open(tmp_path / "dem.tif", "w", count=1, **profile) as dst:
        dst.write(rng.uniform(2000, 3000, (1, 80, 96)).astype("float32"))
    assert main(["import-weights", str(REFERENCE), "--out", str(tmp_path / "model")]) == 0
    code = main(["deploy", "--optical", str(tmp_path / "optical.tif"),
                 "--bands", "blue,green,red,nir,swir1,swir2", "--dem", str(tmp_path / "dem.tif"),
                 "--model", str(tmp_path / "model" / "model.keras"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["grid"]["height"] == 80 and summary["glacier_area_km2"] >= 0
    with rasterio.open(tmp_path / "out" / "glacier_class.tif") as src:
        assert (src.height, src.width) == (80, 96) and src.crs.to_epsg() == 32632
