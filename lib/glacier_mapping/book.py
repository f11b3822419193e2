"""Build the Jupyter Book from executed notebooks only (never from failed or stale ones).

The committed notebooks carry no outputs. The book is built from a staging copy of the book
sources in which each notebook is replaced by its executed version from
``outputs/<profile>/notebooks/`` and the generated pages ("Results at a glance", "Build
information") are written from the run's metrics and manifest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from glacier_mapping.report import build_information, results_at_a_glance

#: Book sources copied into the staging directory, relative to the repository root.
BOOK_SOURCES: tuple[str, ...] = ("_config.yml", "_toc.yml", "book")


class BookBuildError(RuntimeError):
    """The book cannot be built: no run manifest, missing or failed notebooks."""


class BookRenderError(BookBuildError):
    """jupyter-book ran and failed (Sphinx warnings are errors); the message ends with its log."""


def toc_notebooks(toc_path: Path) -> list[str]:
    """Stems of the notebooks listed in ``_toc.yml`` (entries under ``notebooks/``)."""
    import yaml

    stems: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "file" and str(value).startswith("notebooks/"):
                    stems.append(Path(str(value)).name.removesuffix(".ipynb"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc_path.read_text()))
    return stems


def stage_book(repo: Path, output_dir: Path, staging: Path, profile: str) -> Path:
    """Assemble the book sources with executed notebooks and generated pages in ``staging``."""
    manifest_path = output_dir / "manifest.json"
    if not manifest_path.is_file():
        raise BookBuildError(
            f"No run manifest at {manifest_path}: run `glacier-mapping run --profile {profile}`."
        )
    manifest = json.loads(manifest_path.read_text())
    status = {nb["notebook"]: nb["status"] for nb in manifest["notebooks"]}
    wanted = toc_notebooks(repo / "_toc.yml")
    executed = output_dir / "notebooks"
    problems = [
        f"{stem} ({status.get(stem, 'not run')})" if status.get(stem) != "ok"
        else f"{stem} (executed notebook missing)"
        for stem in wanted
        if status.get(stem) != "ok" or not (executed / f"{stem}.ipynb").is_file()
    ]
    if problems:
        raise BookBuildError(
            "Refusing to build the book: these notebooks did not run successfully under profile "
            f"'{profile}': {', '.join(problems)}. Run `glacier-mapping run --profile {profile}`."
        )
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in BOOK_SOURCES:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, staging / name)
        else:
            shutil.copy2(source, staging / name)
    (staging / "notebooks").mkdir()
    for stem in wanted:
        _collapse_parameter_cells(executed / f"{stem}.ipynb", staging / "notebooks")
    (staging / "book" / "results.md").write_text(results_at_a_glance(output_dir, profile))
    (staging / "book" / "build_info.md").write_text(build_information(output_dir))
    return staging


def _collapse_parameter_cells(source: Path, target_dir: Path) -> None:
    """Copy an executed notebook, folding its parameter cells behind a toggle in the book."""
    import nbformat

    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "hide-cell" not in tags:
            cell.metadata["tags"] = [*tags, "hide-cell"]
    nbformat.write(notebook, target_dir / source.name)


def build_book(
    repo: str | Path, output_root: str | Path, profile: str, build_root: str | Path | None = None
) -> Path:
    """Stage and build the book into ``<build_root>/_build/html`` with warnings as errors.

    ``build_root`` defaults to the repository, so ``make book`` renders into ``_build/html``.
    """
    repo = Path(repo).resolve()
    build_root = Path(build_root).resolve() if build_root else repo
    output_dir = (Path(output_root) / profile).resolve()
    staging = stage_book(repo, output_dir, build_root / "_build" / "src", profile)
    command = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(staging),
        "--path-output", str(build_root), "-W", "-n", "--keep-going",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise BookRenderError(f"jupyter-book build failed:\n{tail}")
    html = build_root / "_build" / "html"
    size_mb = sum(f.stat().st_size for f in html.rglob("*") if f.is_file()) / 2**20
    print(f"Book built: {html / 'index.html'} ({size_mb:.1f} MB)")
    return html
