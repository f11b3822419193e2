import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from glacier_mapping.data.patches import (
    coordinate_vector,
    count_patches,
    make_patch_dataset,
    measure_throughput,
    region_vector,
)
from glacier_mapping.data.schema import LOCATION_SLOTS
from glacier_mapping.data.tiles import make_tile, write_tiles

BOUNDS = (10.0, 12.0, 40.0, 44.0)  # lon 10..12, lat 40..44


def _tile(name="ALP-0-0", region="ALP", size=64, patch=32, seed=0):
    rng = np.random.default_rng(seed)
    features = {"optical": rng.random((size, size, 6), dtype=np.float32),
                "dem": rng.random((size, size, 2), dtype=np.float32)}
    labels = np.zeros((size, size), np.uint8)
    labels[: size // 2] = 1
    return make_tile(name, region, features, labels, BOUNDS, patch)


def test_vectors():
    vector = region_vector("SVAL")
    assert vector.shape == (12,) and vector[LOCATION_SLOTS.index("SVAL")] == 1 and vector.sum() == 1
    assert region_vector("UNKNOWN")[-1] == 1
    with pytest.raises(ValueError, match="Unknown region"):
        region_vector("XX")
    np.testing.assert_allclose(coordinate_vector(30.0, 90.0), [0.5, np.sqrt(3) / 2, 1.0, 0.0],
                               atol=1e-7)


def test_random_mode_shapes_and_dtypes():
    ds = make_patch_dataset([_tile()], ["dem", "optical"], 32, 4, mode="random",
                            location="region", seed=1, steps=3)
    batches = list(ds)
    assert len(batches) == 3
    inputs, targets = batches[0]
    assert set(inputs) == {"optical", "dem", "location"}
    assert inputs["optical"].shape == (4, 32, 32, 6) and inputs["dem"].shape == (4, 32, 32, 2)
    assert inputs["location"].shape == (4, 12) and inputs["optical"].dtype.name == "float32"
    assert set(targets) == {"output", "deepsupervision"}
    assert targets["output"].shape == (4, 32, 32, 2)
    # No autotune model thread: destroying an iterator at the end of fit waited for it.
    assert ds.options().autotune.enabled is False


def test_same_seed_same_patches():
    def first(seed):
        ds = make_patch_dataset([_tile()], ["optical"], 32, 2, seed=seed, steps=1)
        return next(iter(ds))[0]["optical"].numpy()

    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))


def test_coordinates_exact_in_radians():
    # 64 px tile, no padding: the four 32 px patches have centres at 1/4 and 3/4 of the extent.
    ds = make_patch_dataset([_tile()], ["optical"], 32, 4, mode="sequential",
                            location="coordinates", deep_supervision=False)
    inputs, targets = next(iter(ds))
    assert set(targets) == {"output"}
    expected = [coordinate_vector(lat, lon)
                for lat in (43.0, 41.0) for lon in (10.5, 11.5)]
    np.testing.assert_allclose(inputs["location"].numpy(), expected, atol=1e-6)
    lat = np.radians(43.0)
    np.testing.assert_allclose(inputs["location"].numpy()[0, :2], [np.sin(lat), np.cos(lat)],
                               atol=1e-6)


def test_coordinates_account_for_padding():
    tile = _tile(size=48, patch=32)  # padded to 64, 8 px each side
    ds = make_patch_dataset([tile], ["optical"], 64, 1, mode="sequential", location="coordinates")
    inputs, targets = next(iter(ds))
    np.testing.assert_allclose(inputs["location"].numpy()[0], coordinate_vector(42.0, 11.0),
                               atol=1e-6)
    output = targets["output"].numpy()[0]
    np.testing.assert_array_equal(output[:8], 0.0)  # padding keeps zero targets


def test_label_smoothing_values():
    ds = make_patch_dataset([_tile()], ["optical"], 32, 4, mode="sequential",
                            label_smoothing=0.1)
    _, targets = next(iter(ds))
    output = targets["output"].numpy()
    np.testing.assert_allclose(np.unique(output), [0.05, 0.95], atol=1e-6)
    np.testing.assert_allclose(output[0, 0, 0], [0.05, 0.95], atol=1e-6)  # glacier half
    np.testing.assert_allclose(output[2, 0, 0], [0.95, 0.05], atol=1e-6)
    np.testing.assert_array_equal(targets["deepsupervision"].numpy(), output)


def test_unknown_region_rate():
    tiles = [_tile(), _tile("SVAL1-0-0", "SVAL")]
    known = make_patch_dataset(tiles, ["optical"], 32, 8, mode="sequential", location="region")
    vectors = np.concatenate([x["location"].numpy() for x, _ in known])
    assert vectors[:, -1].sum() == 0 and vectors[:4, 0].sum() == 4
    unknown = make_patch_dataset(tiles, ["optical"], 32, 8, mode="sequential",
                                 location="region", unknown_region_rate=1.0)
    vectors = np.concatenate([x["location"].numpy() for x, _ in unknown])
    assert vectors[:, -1].sum() == len(vectors)
    mixed = make_patch_dataset(tiles, ["optical"], 32, 50, location="region", seed=0, steps=4)
    share = np.concatenate([x["location"].numpy() for x, _ in mixed])[:, -1].mean()
    assert 0.03 < share < 0.2


def test_sequential_covers_tiles_in_order(tmp_path):
    path = tmp_path / "t.hdf5"
    write_tiles(path, [_tile(), _tile("ALP-0-1", seed=1)])
    ds = make_patch_dataset(path, ["optical"], 32, 3, mode="sequential")
    sizes = [x["optical"].shape[0] for x, _ in ds]
    assert sum(sizes) == count_patches([_tile(), _tile()], 32) == 8
    first = next(iter(ds))[0]["optical"].numpy()
    np.testing.assert_array_equal(first[0], _tile().features["optical"][:32, :32])


def test_augmentations_keep_labels_aligned():
    tile = _tile()
    tile.features["optical"][..., 0] = tile.labels[..., 1]  # a channel equal to the label
    ds = make_patch_dataset([tile], ["optical"], 32, 16, seed=3, steps=2, label_smoothing=0.0)
    for inputs, targets in ds:
        x = inputs["optical"].numpy()[..., 0]
        y = targets["output"].numpy()[..., 1]
        agree = np.mean(np.abs(x - y) < 0.2)  # noise, gamma and occlusion disturb a few pixels
        assert agree > 0.7


def test_errors_and_throughput():
    with pytest.raises(ValueError, match="lacks sensor"):
        make_patch_dataset([_tile()], ["in_sar"], 32, 2)
    with pytest.raises(ValueError, match="mode"):
        make_patch_dataset([_tile()], ["optical"], 32, 2, mode="shuffled")
    with pytest.raises(ValueError, match="smaller than patch_size"):
        make_patch_dataset([_tile()], ["optical"], 128, 2, mode="sequential")
    tiles = [_tile(size=128, patch=64, seed=s) for s in range(4)]
    ds = make_patch_dataset(tiles, ["optical", "dem"], 64, 8, location="coordinates", seed=0)
    result = measure_throughput(ds, batches=10)
    print("throughput", result)
    assert result["patches"] == 80 and result["patches_per_second"] > 50


def test_sequential_length_is_declared():
    ds = make_patch_dataset([_tile(), _tile()], ["optical"], 32, 3, mode="sequential")
    assert int(ds.cardinality()) == 3  # 8 patches in batches of 3
    assert sum(1 for _ in ds) == 3
