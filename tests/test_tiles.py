import h5py
import numpy as np
import pytest

from glacier_mapping.data.tiles import (
    NormStats,
    TileFormatError,
    iter_tiles,
    list_tiles,
    load_norm_stats,
    make_tile,
    read_tile,
    validate_file,
    write_tiles,
)

BOUNDS = (8.0, 8.1, 46.0, 46.1)


def _tile(name="ALP-0-1", region="ALP", size=(50, 40), sar=True, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    features = {"optical": rng.random((h, w, 6), dtype=np.float32),
                "dem": rng.random((h, w, 2), dtype=np.float32)}
    if sar:
        features["in_sar"] = rng.random((h, w, 2), dtype=np.float32)
    labels = (rng.random((h, w)) > 0.5).astype(np.uint8)
    return make_tile(name, region, features, labels, BOUNDS, 32, {"date": "2015-08-31"})


def test_make_tile_pads_centred():
    tile = _tile(size=(50, 40))
    assert tile.shape == (64, 64)
    assert tile.padding == (7, 12)
    assert tile.valid.sum() == 50 * 40 and tile.valid[7, 12] and not tile.valid[6, 12]
    assert tile.features["optical"][0, 0].sum() == 0.0
    np.testing.assert_array_equal(tile.labels[~tile.valid], 0.0)
    np.testing.assert_array_equal(tile.labels[tile.valid].sum(axis=-1), 1.0)


def test_round_trip_and_filters(tmp_path):
    path = tmp_path / "t.hdf5"
    tiles = [_tile(), _tile("SVAL1-2-3", "SVAL", sar=False, seed=1)]
    assert write_tiles(path, tiles) == 2
    assert list_tiles(path) == ["ALP-0-1", "SVAL1-2-3"]
    assert list_tiles(path, regions=["SVAL"]) == ["SVAL1-2-3"]
    back = read_tile(path, "ALP-0-1")
    for name, array in tiles[0].features.items():
        np.testing.assert_array_equal(back.features[name], array)
    np.testing.assert_array_equal(back.labels, tiles[0].labels)
    np.testing.assert_array_equal(back.valid, tiles[0].valid)
    assert back.bounds == BOUNDS and back.attrs["date"] == "2015-08-31"
    assert back.subregion == "ALP" and back.region == "ALP"
    only = read_tile(path, "ALP-0-1", sensors=["dem"])
    assert list(only.features) == ["dem"]
    assert [t.name for t in iter_tiles(path, sensors=["optical"])] == ["ALP-0-1", "SVAL1-2-3"]
    assert validate_file(path) == 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_write_is_byte_identical(tmp_path):
    write_tiles(tmp_path / "a.hdf5", [_tile()])
    write_tiles(tmp_path / "b.hdf5", [_tile()])
    assert (tmp_path / "a.hdf5").read_bytes() == (tmp_path / "b.hdf5").read_bytes()


def test_duplicate_names_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_tiles(tmp_path / "a.hdf5", [_tile(), _tile()])
    assert not (tmp_path / "a.hdf5").exists()


def test_bare_paper_layout_loads(tmp_path):
    path = tmp_path / "20230905_val_global_ps384.hdf5"
    with h5py.File(path, "w") as handle:
        group = handle.create_group("HMA-110-76")
        group["optical"] = np.full((8, 8, 6), 0.5)
        group["dem"] = np.full((8, 8, 2), 0.25)
        group["outlines"] = np.stack([np.ones((8, 8)), np.zeros((8, 8))], axis=-1)
        attrs = dict(region=b"HMA", subregion="HMA", height=8, width=8, original_height=6,
                     original_width=7, padding_height=1, padding_width=0, xmin=86.0,
                     xmax=86.1, ymin=27.9, ymax=28.0)
        group.attrs.update(attrs)
    tile = read_tile(path, "HMA-110-76")
    assert tile.region == "HMA" and tile.features["optical"].dtype == np.float32
    assert tile.valid.sum() == 42 and tile.valid[1, 0] and not tile.valid[0, 0]
    assert validate_file(path) == 1
    stats = load_norm_stats(path)
    assert stats.source == "paper" and stats.maximum["thermal"] == [322.1]


def _write_broken(path, mutate):
    write_tiles(path, [_tile()])
    with h5py.File(path, "a") as handle:
        mutate(handle["ALP-0-1"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.__delitem__("outlines"), "missing 'outlines'"),
        (lambda g: (g.__delitem__("dem"), g.create_dataset("dem", data=np.zeros((64, 64, 3)))),
         "'dem' has shape"),
        (lambda g: g.attrs.__delitem__("xmin"), r"missing attribute\(s\) \['xmin'\]"),
        (lambda g: g["optical"].__setitem__((0, 0, 0), np.nan), "NaN"),
        (lambda g: (g.__delitem__("optical"),
                    g.create_dataset("optical", data=np.zeros((63, 64, 6)))), "'optical'"),
    ],
)
def test_validate_names_file_tile_and_problem(tmp_path, mutate, message):
    path = tmp_path / "broken.hdf5"
    _write_broken(path, mutate)
    with pytest.raises(TileFormatError, match=message) as info:
        validate_file(path)
    assert str(path) in str(info.value) and "ALP-0-1" in str(info.value)


def test_sampled_validation_checks_every_layout_and_some_values(tmp_path):
    path = tmp_path / "t.hdf5"
    write_tiles(path, [_tile(f"ALP-0-{j}", seed=j) for j in range(5)])
    middle = 7 + 50 // 2  # padding before the first row + half the unpadded height
    with h5py.File(path, "a") as handle:
        handle["ALP-0-2"]["dem"][middle - 5, 20, 0] = np.nan
        handle["ALP-0-4"]["dem"][middle, 20, 0] = np.nan
    assert validate_file(path, sample=1) == 5  # only ALP-0-0's values are read
    with pytest.raises(TileFormatError, match=r"tile ALP-0-4: 'dem' contains NaN"):
        validate_file(path, sample=2)  # the first and the last tile
    with pytest.raises(TileFormatError, match=r"tile ALP-0-2: 'dem' contains NaN"):
        validate_file(path)
    with h5py.File(path, "a") as handle:
        del handle["ALP-0-3"]["optical"]
        handle["ALP-0-3"].create_dataset("optical", data=np.zeros((10, 10, 6), np.float32))
    with pytest.raises(TileFormatError, match=r"t.hdf5, tile ALP-0-3: 'optical' has shape "
                                              r"\(10, 10, 6\), expected \(64, 64, 6\).*make_tile"):
        validate_file(path, sample=0)  # shapes come from the metadata of every tile


def test_validation_refuses_arrays_of_text(tmp_path):
    path = tmp_path / "t.hdf5"
    _write_broken(path, lambda g: (g.__delitem__("dem"),
                                   g.create_dataset("dem", data=np.full((64, 64, 2), b"x"))))
    with pytest.raises(TileFormatError, match=r"tile ALP-0-1: 'dem' holds \|S1, not numbers"):
        validate_file(path, sample=0)


def test_missing_sensor_names_tile_and_available(tmp_path):
    path = tmp_path / "t.hdf5"
    write_tiles(path, [_tile(sar=False)])
    expected = r"ALP-0-1.*co_pol_sar.*has only \['optical', 'dem'\]"
    with pytest.raises(TileFormatError, match=expected):
        read_tile(path, "ALP-0-1", sensors=["optical", "co_pol_sar"])
    with pytest.raises(KeyError, match="no tile"):
        read_tile(path, "ALP-9-9")


def test_not_hdf5_and_missing_file(tmp_path):
    bad = tmp_path / "train.hdf5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(TileFormatError, match="not a readable HDF5"):
        validate_file(bad)
    truncated = tmp_path / "trunc.hdf5"
    write_tiles(truncated, [_tile()])
    truncated.write_bytes(truncated.read_bytes()[:3000])
    with pytest.raises(TileFormatError, match="trunc.hdf5"):
        validate_file(truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_tiles(tmp_path / "nope.hdf5")


def test_bad_tile_name_and_shapes():
    with pytest.raises(ValueError, match="SUBREGION"):
        make_tile("ALP_3_4", "ALP", {"dem": np.zeros((4, 4, 2))}, None, BOUNDS, 4)
    with pytest.raises(ValueError, match="dem"):
        make_tile("ALP-3-4", "ALP", {"dem": np.zeros((4, 4, 3))}, None, BOUNDS, 4)


def test_norm_stats_json_round_trip(tmp_path):
    stats = NormStats({}, {})
    stats.update({"dem": np.array([[[0.0, 10.0]], [[100.0, 30.0]]], dtype=np.float32)})
    stats.update({"dem": np.array([[[-5.0, 20.0]]], dtype=np.float32)})
    assert stats.minimum["dem"] == [-5.0, 10.0] and stats.maximum["dem"] == [100.0, 30.0]
    stats.to_json(tmp_path / "norm_stats.json")
    back = load_norm_stats(tmp_path)
    assert back.minimum == stats.minimum and back.maximum == stats.maximum
    raw = np.array([[[-5.0, 10.0], [100.0, 30.0]]], dtype=np.float32)
    normalised = back.normalise("dem", raw)
    np.testing.assert_allclose(normalised, [[[0, 0], [1, 1]]])
    np.testing.assert_allclose(back.denormalise("dem", normalised), raw, atol=1e-5)
    with pytest.raises(ValueError, match="No normalisation statistics"):
        back.normalise("thermal", raw[..., :1])
    (tmp_path / "norm_stats.json").write_text("{broken")
    with pytest.raises(ValueError, match="norm_stats.json"):
        load_norm_stats(tmp_path)
