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
