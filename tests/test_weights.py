"""Tests of importing the original GlaViTU weights: exact parity and clear refusals."""

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import pytest

from glacier_mapping.models import count_parameters
from glacier_mapping.models.weights import (
    WeightImportError,
    export_imported_model,
    import_original_weights,
    parse_weights_name,
    read_layout,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
WEIGHTS = REFERENCE / "glavitu_p64_weights.h5"
IO = REFERENCE / "glavitu_p64_io.npz"
REGION_WEIGHTS = REFERENCE / "glavitu_p64_region_weights.h5"
REGION_IO = REFERENCE / "glavitu_p64_region_io.npz"
needs_reference = pytest.mark.skipif(
    not (WEIGHTS.is_file() and IO.is_file()),
    reason=f"original GlaViTU reference files not found in {REFERENCE}",
)
needs_region_reference = pytest.mark.skipif(
    not (REGION_WEIGHTS.is_file() and REGION_IO.is_file()),
    reason=f"original region-encoding GlaViTU reference files not found in {REFERENCE}",
)


@pytest.fixture(scope="module")
def imported():
    return import_original_weights(WEIGHTS)


@needs_reference
def test_layout_is_inferred_from_the_file():
    layout = read_layout(WEIGHTS)
    assert layout.sensors == ("optical", "dem")
    assert layout.patch_size == 64
    assert layout.location_size is None


@needs_reference
def test_imported_model_reproduces_original_outputs(imported):
    batch = np.load(IO)
    out = imported({"optical": batch["optical"], "dem": batch["dem"]}, training=False)
    for head in ("output", "deepsupervision"):
        assert np.abs(np.asarray(out[head]) - batch[head]).max() <= 1e-5, head
    assert count_parameters(imported) == 9_996_228  # as stated for the reference file


@needs_region_reference
def test_imported_region_encoding_model_reproduces_original_outputs():
    layout = read_layout(REGION_WEIGHTS)
    assert layout.location_size == 12 and layout.sensors == ("optical", "dem")
    model = import_original_weights(REGION_WEIGHTS)
    assert count_parameters(model) == 10_001_732  # as stated for the reference file
    batch = np.load(REGION_IO)
    inputs = {name: batch[name] for name in ("optical", "dem", "location")}
    out = model(inputs, training=False)
    for head in ("output", "deepsupervision"):
        assert np.abs(np.asarray(out[head]) - batch[head]).max() <= 1e-5, head
    # The location vector reaches the outputs: swapping the samples' vectors changes them.
    swapped = model({**inputs, "location": batch["location"][::-1]}, training=False)
    assert np.abs(np.asarray(swapped["output"]) - batch["output"]).max() > 1e-2


@needs_reference
def test_wrong_patch_size_is_refused():
    with pytest.raises(WeightImportError, match="patch size 64"):
        import_original_weights(WEIGHTS, patch_size=384)


def _copy(tmp_path, name="glavitu_global_weights.h5"):
    target = tmp_path / name
    shutil.copyfile(WEIGHTS, target)
    target.chmod(0o644)
    return target


@needs_reference
def test_misshaped_and_missing_tensors_are_listed(tmp_path):
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as handle:
        group = handle["output"]
        names = list(group.attrs["weight_names"])
        bias = names[1].decode() if isinstance(names[1], bytes) else names[1]
        del group[bias]
        group.create_dataset(bias, data=np.zeros(3, np.float32))
        setr = handle["SETR"]
        setr_names = list(setr.attrs["weight_names"])
        setr.attrs["weight_names"] = setr_names[:-1]  # drop the last moving variance
    with pytest.raises(WeightImportError) as error:
        import_original_weights(path)
    message = str(error.value)
    assert "output/bias:0" in message and "expected (2,), found (3,)" in message
    assert "SETR/<missing>" in message and "expected (64,), found None" in message
    assert "nothing was loaded" in message


def test_non_glavitu_file_is_refused(tmp_path):
    path = tmp_path / "deeplab_global_weights.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([b"optical", b"resnest", b"output"])
        group = handle.create_group("resnest")
        group.attrs["weight_names"] = np.array([b"conv/kernel:0"])
        group.create_dataset("conv/kernel:0", data=np.zeros((3, 3, 6, 64), np.float32))
    with pytest.raises(WeightImportError, match="not an original GlaViTU weights file"):
        import_original_weights(path)
    text = tmp_path / "notes_weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(WeightImportError, match="not an HDF5 file"):
        import_original_weights(text)
    with pytest.raises(FileNotFoundError):
        import_original_weights(tmp_path / "absent.h5")


def test_export_refuses_a_name_off_the_template_before_reading(tmp_path):
    renamed = tmp_path / "glavitu_p64.h5"
    renamed.write_text("not even hdf5")
    with pytest.raises(WeightImportError, match=r"glavitu_p64.h5 does not follow <MODEL>_"
                                                r"<STRATEGY>.*rename it"):
        export_imported_model(renamed, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"absent_weights.h5; pass the path"):
        export_imported_model(tmp_path / "absent_weights.h5", tmp_path / "out")
    text = tmp_path / "glavitu_global_weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(WeightImportError, match=r"is not an HDF5 file \(.*\); pass a weights"):
        export_imported_model(text, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_reference
def test_export_writes_model_and_card(tmp_path):
    path = _copy(tmp_path, "glavitu_regional_ALP-SC_weights.h5")
    out_dir = export_imported_model(path, tmp_path / "export")
    card = json.loads((out_dir / "model_card.json").read_text())
    assert card["sensors"] == ["optical", "dem"]
    assert card["patch_size"] == 64 and card["location_input"] is False
    assert card["parameter_count"] == 9_996_228
    assert card["strategy"] == "regional" and card["regions"] == "ALP-SC"
    assert len(card["source_sha256"]) == 64
    model = keras.saving.load_model(out_dir / "model.keras")
    batch = np.load(IO)
    out = model({"optical": batch["optical"], "dem": batch["dem"]}, training=False)
    assert np.abs(np.asarray(out["output"]) - batch["output"]).max() <= 1e-5


def test_file_name_template_is_parsed():
    assert parse_weights_name("glavitu_global_weights.h5") == {
        "model": "glavitu", "strategy": "global", "regions": None, "track": None
    }
    assert parse_weights_name("glavitu_finetuning_HMA_sar_weights.h5")["track"] == "sar"
    assert parse_weights_name("random.h5") == {}
    assert parse_weights_name("glavitu_p64_weights.h5") == {}  # no known strategy
