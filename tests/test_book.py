"""Staging and building the book from executed notebooks only (no real jupyter-book run)."""

import json
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

from glacier_mapping import book
from glacier_mapping.book import BookBuildError, build_book, stage_book, toc_notebooks

REPO = Path(__file__).resolve().parents[1]
STEMS = ["01_alpha", "02_beta"]


def _notebook(tags_per_cell):
    notebook = nbformat.v4.new_notebook()
    for index, tags in enumerate(tags_per_cell):
        cell = nbformat.v4.new_code_cell(f"x = {index}")
        if tags is not None:
            cell.metadata["tags"] = list(tags)
        notebook.cells.append(cell)
    return notebook


def _manifest(statuses):
    return {
        "profile": {"name": "smoke", "description": "a test profile"}, "seed": 7,
        "git_commit": "abc1234", "platform": "Linux", "cpu_count": 2,
        "started": "2024-01-01T00:00:00", "total_notebook_seconds": 12.0,
        "notebooks": [{"notebook": stem, "status": status, "seconds": 5.5}
                      for stem, status in statuses.items()],
        "versions": {"numpy": "1.0"},
    }


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("title: Test book\n")
    toc = {"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "One", "chapters": [{"file": "notebooks/01_alpha"}]},
        {"caption": "Two", "chapters": [{"file": "notebooks/02_beta.ipynb",
                                         "sections": [{"file": "book/results"}]}]},
    ]}
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "book" / "results.md").write_text("placeholder\n")
    (root / "notebooks").mkdir()  # committed notebooks: never copied into the staging
    nbformat.write(_notebook([None]), root / "notebooks" / "01_alpha.ipynb")
    return root


@pytest.fixture
def output_dir(tmp_path):
    out = tmp_path / "outputs" / "smoke"
    (out / "notebooks").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(_manifest(dict.fromkeys(STEMS, "ok"))))
    nbformat.write(_notebook([["parameters"], ["injected-parameters"], None, ["hide-cell"],
                              ["parameters", "hide-cell"], ["other"]]),
                   out / "notebooks" / "01_alpha.ipynb")
    nbformat.write(_notebook([None]), out / "notebooks" / "02_beta.ipynb")
    return out


def test_toc_notebooks_of_the_repository_and_of_nested_tocs(repo):
    stems = toc_notebooks(REPO / "_toc.yml")
    assert stems == sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert toc_notebooks(repo / "_toc.yml") == STEMS  # suffix removed; book/ pages left out


def test_stage_book_copies_sources_executed_notebooks_and_generated_pages(repo, output_dir,
                                                                          tmp_path):
    staging = tmp_path / "staging"
    (staging / "stale").mkdir(parents=True)
    assert stage_book(repo, output_dir, staging, "smoke") == staging
    assert not (staging / "stale").exists()
    assert (staging / "_config.yml").read_text() == "title: Test book\n"
    assert (staging / "_toc.yml").is_file() and (staging / "book" / "intro.md").is_file()
    assert sorted(p.name for p in (staging / "notebooks").iterdir()) == [
        "01_alpha.ipynb", "02_beta.ipynb"]
    tags = [cell.metadata.get("tags") for cell in
            nbformat.read(staging / "notebooks" / "01_alpha.ipynb", as_version=4).cells]
    assert tags == [["parameters", "hide-cell"], ["injected-parameters", "hide-cell"], None,
                    ["hide-cell"], ["parameters", "hide-cell"], ["other"]]
    # The executed notebook itself is left as it was.
    source = nbformat.read(output_dir / "notebooks" / "01_alpha.ipynb", as_version=4)
    assert source.cells[0].metadata["tags"] == ["parameters"]
    results = (staging / "book" / "results.md").read_text()
    assert results.startswith("(results-at-a-glance)=") and "profile `smoke`" in results
    assert (repo / "book" / "results.md").read_text() == "placeholder\n"  # sources untouched
    info = (staging / "book" / "build_info.md").read_text()
    assert "Git commit: `abc1234`" in info and "| 01_alpha | ok | 5.5 |" in info


def test_stage_book_refuses_without_a_manifest(repo, tmp_path):
    with pytest.raises(BookBuildError, match="No run manifest.*--profile quick"):
        stage_book(repo, tmp_path / "nothing", tmp_path / "staging", "quick")
    assert not (tmp_path / "staging").exists()


@pytest.mark.parametrize(("statuses", "remove", "expected"), [
    ({"01_alpha": "ok", "02_beta": "failed"}, None, r"02_beta \(failed\)"),
    ({"01_alpha": "ok"}, None, r"02_beta \(not run\)"),
    ({"01_alpha": "ok", "02_beta": "ok"}, "02_beta", r"02_beta \(executed notebook missing\)"),
])
def test_stage_book_refuses_failed_missing_or_unrun_notebooks(repo, output_dir, tmp_path,
                                                              statuses, remove, expected):
    (output_dir / "manifest.json").write_text(json.dumps(_manifest(statuses)))
    if remove:
        (output_dir / "notebooks" / f"{remove}.ipynb").unlink()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "keep").write_text("previous build")
    with pytest.raises(BookBuildError, match=expected) as error:
        stage_book(repo, output_dir, staging, "smoke")
    assert "01_alpha" not in str(error.value)
    assert (staging / "keep").is_file()  # nothing is touched before the check passes


def test_build_book_runs_jupyter_book_with_warnings_as_errors(repo, output_dir, tmp_path,
                                                              monkeypatch, capsys):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        html = tmp_path / "build" / "_build" / "html"
        html.mkdir(parents=True)
        (html / "index.html").write_text("<html></html>")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(book.subprocess, "run", fake_run)
    html = build_book(repo, tmp_path / "outputs", "smoke", build_root=tmp_path / "build")
    assert html == (tmp_path / "build" / "_build" / "html").resolve()
    (command,) = calls
    assert Path(command[0]).name == "jupyter-book" and command[1] == "build"
    assert command[2] == str((tmp_path / "build" / "_build" / "src").resolve())
    assert {"-W", "-n", "--keep-going"} <= set(command)
    assert command[command.index("--path-output") + 1] == str((tmp_path / "build").resolve())
    assert (tmp_path / "build" / "_build" / "src" / "notebooks" / "02_beta.ipynb").is_file()
    assert "Book built:" in capsys.readouterr().out


def test_build_book_reports_the_tail_of_a_failed_build(repo, output_dir, tmp_path, monkeypatch):
    log = "\n".join(f"line {i}" for i in range(100))

    def fake_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, log, "WARNING: bad reference")

    monkeypatch.setattr(book.subprocess, "run", fake_run)
    with pytest.raises(BookBuildError, match="jupyter-book build failed") as error:
        build_book(repo, tmp_path / "outputs", "smoke", build_root=tmp_path / "build")
    message = str(error.value)
    assert "WARNING: bad reference" in message and "line 99" in message
    assert "line 10\n" not in message  # only the last 30 lines
