"""The command line: sub-commands, exit codes, and import-weights writes a loadable model."""

import json
import shutil

import pytest

from conftest import SHARED
from glacier_mapping import cli
from glacier_mapping.cli import build_parser, main

REFERENCE = SHARED / "reference" / "glavitu_p64_weights.h5"


def _reference(tmp_path):
    """The reference weights under a name following the original's template."""
    return shutil.copyfile(REFERENCE, tmp_path / "glavitu_global_weights.h5")


def test_subcommands():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"run", "build-book", "import-weights", "deploy"} <= set(commands)
    assert "--optical" in commands["deploy"].format_help()
    # Another command does not load the deploy modules (and TensorFlow) for their options.
    only_run = build_parser("run")._subparsers._group_actions[0].choices
    assert "--optical" not in only_run["deploy"].format_help()


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    for code in ("0 ", "1 ", "2 ", "130"):
        assert f"\n  {code}" in text
    assert "130" in build_parser()._subparsers._group_actions[0].choices["run"].format_help()


def test_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--seed", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("glacier-mapping run: error: argument --seed: invalid int value: 'abc'; "
                   "see glacier-mapping run --help.\n")


@pytest.mark.parametrize(("raised", "code", "first"), [
    (KeyboardInterrupt(), 130, "glacier-mapping build-book: interrupted (Ctrl-C)."),
    ("BookBuildError", 2, "glacier-mapping build-book: error: no manifest"),
    ("BookRenderError", 1, ""),
    (FileNotFoundError("no such file: x.yaml"), 2,
     "glacier-mapping build-book: error: no such file: x.yaml"),
])
def test_exit_codes(monkeypatch, capsys, raised, code, first):
    if isinstance(raised, str):
        raised = getattr(cli.book, raised)("no manifest")

    def build_book(*args):
        raise raised

    monkeypatch.setattr(cli.book, "build_book", build_book)
    assert main(["build-book"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 1:
        assert err.startswith("\nFAILED: no manifest")
    else:
        assert err == first + "\n"


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"reference weights absent: {REFERENCE}")
def test_import_weights_writes_model_and_card(tmp_path):
    assert main(["import-weights", str(_reference(tmp_path)), "--out", str(tmp_path)]) == 0
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["sensors"] == ["optical", "dem"] and card["patch_size"] == 64
    assert (tmp_path / "model.keras").stat().st_size > 1_000_000


def test_import_weights_refuses_other_files(tmp_path, capsys):
    bogus = tmp_path / "deeplab_global_weights.h5"
    import h5py

    with h5py.File(bogus, "w") as handle:
        handle.create_group("backbone")
    assert main(["import-weights", str(bogus), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"glacier-mapping import-weights: error: {bogus} is not an original")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


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
    assert main(["import-weights", str(_reference(tmp_path)), "--out",
                 str(tmp_path / "model")]) == 0
    code = main(["deploy", "--optical", str(tmp_path / "optical.tif"),
                 "--bands", "blue,green,red,nir,swir1,swir2", "--dem", str(tmp_path / "dem.tif"),
                 "--model", str(tmp_path / "model" / "model.keras"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["grid"]["height"] == 80 and summary["glacier_area_km2"] >= 0
    with rasterio.open(tmp_path / "out" / "glacier_class.tif") as src:
        assert (src.height, src.width) == (80, 96) and src.crs.to_epsg() == 32632
