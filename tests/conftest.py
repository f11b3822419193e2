"""Shared test fixtures and paths."""

import os
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from glacier_mapping.data.scenes import Grid
from glacier_mapping.registry import RealSceneNotAvailable, everest_scene

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Where the end-to-end smoke run writes (git-ignored); reruns reuse its artifact cache.
SMOKE_OUTPUTS = REPO / "outputs"
SMOKE_BOOK_ROOT = REPO / "outputs" / "smoke" / "book"


@pytest.fixture(scope="session")
def smoke_book() -> Path:
    """Execute every chapter under the smoke profile and build the book; the HTML directory."""
    from glacier_mapping.book import build_book
    from glacier_mapping.pipeline import run_pipeline

    run_pipeline("smoke", REPO / "notebooks", SMOKE_OUTPUTS)
    return build_book(REPO, SMOKE_OUTPUTS, "smoke", build_root=SMOKE_BOOK_ROOT)


@pytest.fixture(scope="module")
def everest_rgi():
    """The real Everest scene: its files, RGI 6.0 mask and grid, and outlines (or a skip)."""
    try:
        scene = everest_scene()
    except RealSceneNotAvailable as error:
        pytest.skip(f"Everest scene not available (shared/real_scenes absent): {error}")
    with rasterio.open(scene.mask) as dataset:
        mask = dataset.read(1)
        grid = Grid(dataset.crs, dataset.transform, dataset.height, dataset.width)
    return scene, mask, grid, gpd.read_file(scene.outlines)
