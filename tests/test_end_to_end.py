"""Every chapter executes under the smoke profile and the book builds with warnings as errors."""

import json

import pytest

from conftest import REPO, SMOKE_OUTPUTS
from glacier_mapping.book import toc_notebooks
from glacier_mapping.pipeline import discover_notebooks

pytestmark = pytest.mark.e2e


def test_every_numbered_notebook_is_in_the_toc():
    assert [nb.stem for nb in discover_notebooks(REPO / "notebooks")] == toc_notebooks(
        REPO / "_toc.yml"
    )


def test_smoke_book_builds(smoke_book):
    manifest = json.loads((SMOKE_OUTPUTS / "smoke" / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert {nb["notebook"] for nb in manifest["notebooks"]} == set(toc_notebooks(REPO / "_toc.yml"))
    assert (smoke_book / "index.html").is_file()
    for stem in toc_notebooks(REPO / "_toc.yml"):
        assert (smoke_book / "notebooks" / f"{stem}.html").is_file()
    size_mb = sum(f.stat().st_size for f in smoke_book.rglob("*") if f.is_file()) / 2**20
    assert size_mb < 60, f"rendered book is {size_mb:.1f} MB"


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    import nbformat

    for path in discover_notebooks(REPO / "notebooks"):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs for c in code), f"{path.name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name


def test_executed_notebooks_are_free_of_warnings_and_log_spam(smoke_book):
    import nbformat

    noisy = []
    for path in sorted((SMOKE_OUTPUTS / "smoke" / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            for output in cell.get("outputs", []):
                text = output.get("text", "") if output.get("output_type") == "stream" else ""
                if output.get("name") == "stderr" or "WARNING" in text or "Warning" in text:
                    noisy.append(f"{path.name} cell {index}: {text[:120]!r}")
                html = output.get("data", {}).get("text/html", "")
                if "hv-jupyter-exc" in html:  # HoloViews shows a figure's exception as HTML
                    noisy.append(f"{path.name} cell {index}: a figure failed to render")
                if text.count("\r") > 5:  # a progress bar dumped line by line
                    noisy.append(f"{path.name} cell {index}: progress bar in output")
    assert noisy == []
