"""Questions about a split's tile file: regions, sensor coverage, a region's tiles stacked."""

import numpy as np
import pytest

from glacier_mapping.data.splits import (
    region_tiles,
    regions_with_sensors,
    split_regions,
    stack_tiles,
)
from glacier_mapping.data.tiles import make_tile, read_tile, write_tiles

PATCH = 16
BASE = ("optical", "dem")


def _tile(name, region, sensors=BASE, height=16, width=16, value=0.0, acquisition=None):
    features = {}
    for index, sensor in enumerate(sensors):
        channels = {"optical": 6, "dem": 2, "thermal": 1, "co_pol_sar": 2}[sensor]
        array = np.full((height, width, channels), value + index, np.float32)
        array[0, 0] = value + 0.5  # marks the top-left pixel of the unpadded tile
        features[sensor] = array
    extra = {"acquisition": acquisition, "date": "2023-08-31"} if acquisition else None
    return make_tile(name, region, features, np.ones((height, width), np.uint8),
                     (0.0, 1.0, 0.0, 1.0), PATCH, extra)


@pytest.fixture
def tile_file(tmp_path):
    path = tmp_path / "independent.hdf5"
    write_tiles(path, [
        _tile("ALP-0-0", "ALP", (*BASE, "thermal"), value=1.0),
        _tile("ALP-0-1", "ALP", BASE, height=12, width=10, value=2.0),
        _tile("ALP_2023-0-0", "ALP", (*BASE, "thermal"), value=3.0, acquisition="temporal"),
        _tile("HMA1-0-0", "HMA", (*BASE, "thermal", "co_pol_sar"), value=4.0),
        _tile("SC2-0-0", "SC", BASE, value=5.0, acquisition="spatial"),
        _tile("SC2-0-1", "SC", (*BASE, "thermal"), value=6.0, acquisition="spatial"),
    ])
    return path


def test_split_regions(tile_file):
    assert split_regions(tile_file) == ["ALP", "HMA", "SC"]
    assert split_regions(str(tile_file), acquisition="spatial") == ["SC"]
    assert split_regions(tile_file, acquisition="temporal") == ["ALP"]
    assert split_regions(tile_file, acquisition="none") == []


def test_regions_with_sensors_needs_every_tile(tile_file):
    assert regions_with_sensors(tile_file, BASE) == {"ALP", "HMA", "SC"}
    assert regions_with_sensors(tile_file, ["thermal"]) == {"HMA"}  # ALP-0-1, SC2-0-0 lack it
    assert regions_with_sensors(tile_file, ["optical", "co_pol_sar"]) == {"HMA"}
    assert regions_with_sensors(tile_file, ["in_sar"]) == set()
    assert regions_with_sensors(tile_file, []) == {"ALP", "HMA", "SC"}


def test_region_tiles_reads_one_region_and_acquisition(tile_file):
    tiles = region_tiles(tile_file, "ALP", ["dem"])
    assert [t.name for t in tiles] == ["ALP-0-0", "ALP-0-1", "ALP_2023-0-0"]
    assert all(list(t.features) == ["dem"] for t in tiles)
    temporal = region_tiles(tile_file, "ALP", BASE, acquisition="temporal")
    assert [t.name for t in temporal] == ["ALP_2023-0-0"]
    assert sorted(temporal[0].features) == ["dem", "optical"]
    spatial = region_tiles(tile_file, "SC", ["optical"], acquisition="spatial")
    assert [t.name for t in spatial] == ["SC2-0-0", "SC2-0-1"]
    with pytest.raises(ValueError, match="No spatial tiles of region 'ALP'"):
        region_tiles(tile_file, "ALP", BASE, acquisition="spatial")
    with pytest.raises(ValueError, match="region 'NZ'"):
        region_tiles(tile_file, "NZ", BASE)


def test_stack_tiles_crops_padding_and_stacks_top_to_bottom(tile_file):
    full = read_tile(tile_file, "ALP-0-0", BASE)
    padded = read_tile(tile_file, "ALP-0-1", BASE)  # 12 x 10 padded to 16 x 16
    assert padded.shape == (16, 16) and padded.padding == (2, 3)
    stacked = stack_tiles([full, padded])
    assert list(stacked) == ["dem", "optical"]
    assert stacked["optical"].shape == (16 + 12, 10, 6)  # narrowest width
    assert stacked["dem"].shape == (28, 10, 2)
    optical = stacked["optical"]
    assert optical[0, 0, 0] == 1.5 and optical[1, 0, 0] == 1.0  # first tile on top
    assert optical[16, 0, 0] == 2.5  # the second tile starts at its unpadded corner
    assert (optical[17:, :, 0] == 2.0).all() and (optical[16, 1:, 0] == 2.0).all()
    assert (stacked["dem"][17:, :, 0] == 3.0).all()  # dem is the second sensor: value + 1
    np.testing.assert_array_equal(stack_tiles([padded])["optical"],
                                  padded.features["optical"][2:14, 3:13])


def test_stack_tiles_refuses_no_tiles_or_mixed_sensors(tile_file):
    with pytest.raises(ValueError, match="at least one tile"):
        stack_tiles([])
    mixed = [read_tile(tile_file, "ALP-0-0"), read_tile(tile_file, "ALP-0-1")]
    assert sorted(mixed[0].features) != sorted(mixed[1].features)
    with pytest.raises(ValueError, match="same sensors"):
        stack_tiles(mixed)
