"""Real-scene registry: checksums, local copies, clear errors; never downloads."""

import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from conftest import SHARED
from glacier_mapping import registry
from glacier_mapping.registry import (
    REGISTRY,
    ChecksumMismatch,
    RealSceneNotAvailable,
    everest_scene,
    fetch,
)
from glacier_mapping.store import file_digest

REAL = SHARED / "real_scenes"
B4 = "everest_landsat7/LE71400412000304SGS00_B4_test.tif"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real example scenes not found at {REAL} (see README: real data)"
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No environment override and an empty cache, so only explicit copies are found."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.setenv(registry.CACHE_ENV_VAR, str(tmp_path / "cache"))


def test_registry_urls_are_pinned():
    for entry in REGISTRY.values():
        assert len(entry.sha256) == 64
        if entry.url is not None:
            assert registry.UPSTREAM_COMMIT in entry.url
            assert entry.url.startswith("https://raw.githubusercontent.com/GlacioHack/")
    assert sum(entry.url is None for entry in REGISTRY.values()) == 3  # derived masks


@needs_real
def test_checksums_match_the_shared_copies():
    for name, entry in REGISTRY.items():
        assert file_digest(REAL / name) == entry.sha256, name


@needs_real
def test_corrupted_copy_fails_verification(tmp_path):
    local = tmp_path / "copy"
    (local / "everest_landsat7").mkdir(parents=True)
    shutil.copy(REAL / B4, local / B4)
    assert fetch(B4, local_dir=local) == local / B4
    data = bytearray((local / B4).read_bytes())
    data[-1] ^= 0xFF
    (local / B4).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"B4_test.tif: sha256 .* differs"):
        fetch(B4, local_dir=local)


@needs_real
def test_environment_variable_is_searched(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.ENV_VAR, str(REAL))
    monkeypatch.setattr(registry, "_DEFAULT_SHARED", tmp_path / "nowhere")
    assert fetch(B4) == REAL / B4


def test_missing_file_explains_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_DEFAULT_SHARED", tmp_path / "nowhere")
    with pytest.raises(RealSceneNotAvailable, match=r"GLACIER_MAPPING_REAL_SCENES.*download=True"):
        fetch(B4, local_dir=tmp_path / "empty")
    with pytest.raises(RealSceneNotAvailable, match=r"derived in the shared kit"):
        fetch("everest_landsat7/glacier_mask_rgi60.tif", local_dir=tmp_path / "empty")
    with pytest.raises(KeyError, match=r"Unknown real-scene file"):
        fetch("nope.tif")


@needs_real
def test_everest_scene_opens_on_one_grid():
    scene = everest_scene()
    with rasterio.open(scene.rgb) as rgb, rasterio.open(scene.nir) as nir, \
            rasterio.open(scene.mask) as mask:
        # The AREA_OR_POINT pitfall: B4 says Point, RGB says Area, yet with GDAL defaults
        # both open with the same transform and origin.
        assert nir.tags().get("AREA_OR_POINT") == "Point"
        assert rgb.tags().get("AREA_OR_POINT") == "Area"
        assert rgb.transform == nir.transform == mask.transform
        assert (rgb.transform.c, rgb.transform.f) == (478000.0, 3108140.0)
        assert rgb.crs.to_epsg() == nir.crs.to_epsg() == 32645
        assert (rgb.width, rgb.height, rgb.count) == (800, 655, 3)
        fraction = float(np.mean(mask.read(1)))
    assert fraction == pytest.approx(0.5397, abs=1e-4)
    outlines = gpd.read_file(scene.outlines, layer="glacier_outlines")
    assert len(outlines) == 86
    assert scene.date == "2000-10-30"
