"""Shared test fixtures and paths."""

import os
from pathlib import Path

import pytest

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
