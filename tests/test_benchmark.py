import dataclasses
import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from glacier_mapping.data.benchmark import BenchmarkSpec, build_benchmark, open_benchmark
from glacier_mapping.data.tiles import iter_tiles, list_tiles, validate_file

SPEC = BenchmarkSpec(regions=("ALP", "SVAL"), independent_regions=("SC",),
                     temporal_regions=("SVAL",), tiles_per_side=2, tile_size=56,
                     patch_size=32, seed=4)
FILES = ("train.hdf5", "val.hdf5", "test.hdf5", "independent.hdf5", "norm_stats.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_benchmark(SPEC, tmp_path_factory.mktemp("bench"))


def _tifs(root):
    return sorted(p.relative_to(root) for p in root.glob("independent/*/*.tif"))


def test_same_seed_byte_identical(built, tmp_path):
    again = build_benchmark(SPEC, tmp_path / "again")
    for name in FILES:
        assert (built.root / name).read_bytes() == (again.root / name).read_bytes(), name
    assert _tifs(built.root) == _tifs(again.root) and len(_tifs(built.root)) == 6
    for relative in _tifs(built.root):
        assert (built.root / relative).read_bytes() == (again.root / relative).read_bytes()


def test_different_seed_differs(built, tmp_path):
    other = build_benchmark(dataclasses.replace(SPEC, seed=5), tmp_path / "other")
    for name in ("train.hdf5", "independent.hdf5"):
        assert (built.root / name).read_bytes() != (other.root / name).read_bytes()


def test_splits_and_schema(built):
    names = {split: list_tiles(built.split_path(split)) for split in ("train", "val", "test")}
    for region in ("ALP", "SVAL1"):
        counts = [sum(n.startswith(region + "-") for n in names[s]) for s in names]
        assert counts == [2, 1, 1]
    all_names = sum(names.values(), [])
    assert len(set(all_names)) == len(all_names) == 8
    assert validate_file(built.train) == 4
    tile = next(iter_tiles(built.train, regions=["ALP"]))
    assert tile.shape == (64, 64) and tile.padding == (4, 4)
    assert set(tile.features) == {"optical", "dem", "co_pol_sar", "cross_pol_sar", "in_sar",
                                  "thermal"}
    train = np.concatenate([t.features["optical"][t.valid] for t in iter_tiles(built.train)])
    np.testing.assert_allclose([train.min(), train.max()], [0.0, 1.0], atol=1e-6)
    stats = built.stats()
    assert stats.source.startswith("synthetic") and "in_sar" in stats.minimum


def test_independent_set(built):
    tiles = list(iter_tiles(built.independent))
    assert {t.attrs["acquisition"] for t in tiles} == {"temporal", "spatial"}
    assert all(set(t.features) == {"optical", "dem"} for t in tiles)
    assert {t.subregion for t in tiles} == {"SVAL1_2023", "SC2"}
    summary = built.summary()
    assert set(summary["split"]) == {"train", "val", "test", "independent_temporal",
                                     "independent_spatial"}
    assert summary["tiles"].sum() == 16
    assert summary["glacier_share"].between(0, 1).all()


def test_scene_geotiffs(built):
    folder = built.root / "independent" / "SC_2018-08-31"
    assert folder in built.scenes
    with rasterio.open(folder / "optical.tif") as src:
        assert src.count == 6 and src.crs.to_epsg() == 32632 and src.nodata == -9999.0
        assert src.descriptions[4] == "swir1" and src.res == (30.0, 30.0)
        optical_transform = src.transform
    with rasterio.open(folder / "dem.tif") as src:
        assert src.count == 2 and src.transform == optical_transform
        elevation = src.read(1)
    assert 300 <= elevation.mean() <= 2050
    with rasterio.open(folder / "reference.tif") as src:
        reference = src.read(1)
        assert src.transform == optical_transform and set(np.unique(reference)) <= {0, 1}
    polygons = gpd.read_file(folder / "reference.gpkg")
    assert polygons.crs.to_epsg() == 32632
    np.testing.assert_allclose(polygons.area.sum(), reference.sum() * 900.0, rtol=1e-6)


def test_open_benchmark_ours_and_paper_names(built, tmp_path):
    opened = open_benchmark(built.root)
    assert opened.train == built.train and opened.independent == built.independent
    assert opened.scenes == built.scenes and opened.norm_stats is not None
    paper = tmp_path / "paper"
    paper.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(built.root / f"{split}.hdf5", paper / f"20230905_{split}_global_ps384.hdf5")
    opened = open_benchmark(paper)
    assert opened.val.name == "20230905_val_global_ps384.hdf5" and opened.norm_stats is None
    assert opened.stats().source == "paper"
    for split in ("train", "val", "test"):
        shutil.copy(built.root / f"{split}.hdf5", paper / f"gsgm_{split}_DEMO.hdf5")
    with pytest.raises(ValueError, match="tag="):
        open_benchmark(paper)
    assert open_benchmark(paper, tag="DEMO").test.name == "gsgm_test_DEMO.hdf5"
    with pytest.raises(FileNotFoundError, match="train"):
        open_benchmark(tmp_path)


def test_validate_counts_tiles_and_reads_the_statistics(built, tmp_path):
    assert built.validate() == {"train": 4, "val": 2, "test": 2, "independent": 8}
    copy = tmp_path / "copy"
    shutil.copytree(built.root, copy)
    (copy / "norm_stats.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"copy/norm_stats.json: not a normalisation"):
        open_benchmark(copy).validate()


def test_spec_validation():
    with pytest.raises(ValueError, match="valid codes"):
        BenchmarkSpec(regions=("ALPS",))
    with pytest.raises(ValueError, match="both training and independent"):
        BenchmarkSpec(regions=("ALP",), independent_regions=("ALP",))
    with pytest.raises(ValueError, match="distinct years"):
        BenchmarkSpec(regions=("ALP",), later_dates=(2023, "2023-09-01"))
    with pytest.raises(ValueError, match="preset"):
        BenchmarkSpec.preset("huge")
    assert BenchmarkSpec.preset("quick").scene_size == 800
