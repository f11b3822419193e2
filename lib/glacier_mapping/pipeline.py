"""Papermill pipeline runner: executes the numbered notebooks under a profile, writes a manifest.

Notebooks run one kernel at a time, in file order, each from the notebooks directory. Each
executed notebook is written to ``<output_dir>/notebooks/`` only when it succeeded; a failed or
interrupted one is kept as ``*.failed.ipynb`` for inspection and is never rendered into the book.
The profile, the notebooks' parameters cells and a given ``data_dir`` are checked before anything
is written or any kernel starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_event_loop
from traitlets import default

from glacier_mapping.config import Profile, load_profile
from glacier_mapping.data.benchmark import open_benchmark
from glacier_mapping.machine import cpu_description
from glacier_mapping.store import NOTEBOOK_ENV, ArtifactStore, atomic_path, atomic_write_json
from glacier_mapping.workflow import check_benchmark

#: Packages whose versions the manifest records.
RECORDED_PACKAGES: tuple[str, ...] = (
    "glacier-mapping", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pandas", "xarray",
    "rioxarray", "rasterio", "geopandas", "h5py", "scikit-learn", "holoviews", "hvplot", "bokeh",
    "panel", "papermill", "jupyter-book",
)
#: Parameters every notebook receives; its parameters cell must declare them.
BASE_PARAMETERS: tuple[str, ...] = ("profile", "data_dir", "output_dir", "seed")
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


@dataclass
class NotebookRun:
    """Outcome of one notebook execution."""

    notebook: str
    status: str
    seconds: float
    peak_memory_mb: float
    parameters: dict[str, Any]
    artifacts_reused: int = 0
    artifacts_computed: int = 0
    error: str = ""


def discover_notebooks(notebook_dir: str | Path) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) of a directory, in pipeline order."""
    notebooks = sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"No numbered notebooks (NN_name.ipynb) found in {notebook_dir}; run from the "
            "repository root, where they are in notebooks/."
        )
    return notebooks


def select_notebooks(notebooks: Sequence[Path], only: Sequence[str] | None) -> list[Path]:
    """Keep the notebooks whose number or stem is listed in ``only`` (all when empty)."""
    if not only:
        return list(notebooks)
    chosen = [nb for nb in notebooks if nb.stem[:2] in only or nb.stem in only]
    missing = [
        item for item in only if not any(item in (nb.stem[:2], nb.stem) for nb in notebooks)
    ]
    if missing:
        names = ", ".join(nb.stem for nb in notebooks)
        raise ValueError(f"--only {missing}: no such notebook; available: {names}.")
    return chosen


class _PeakMemory:
    """Samples the resident memory of this process's children (the kernel) in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for child in self._process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self._peak = max(self._peak, total)
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self._peak / 2**20


def check_declared_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Refuse to inject a parameter the notebook's ``parameters`` cell does not declare."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(
            f"{notebook.name} has no cell tagged 'parameters'; add one declaring "
            f"{', '.join(BASE_PARAMETERS)}."
        )
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{notebook.name}: parameter(s) {unknown} are not declared in its parameters cell "
            f"(declared: {sorted(declared)}); fix the profile's notebooks section or the notebook."
        )


class _LocalKernelManager(AsyncKernelManager):
    """A kernel that talks to the runner over local IPC sockets, not unencrypted TCP ports.

    The sockets lie beside the kernel's connection file in Jupyter's runtime directory.
    """

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Stop the kernel without interrupting it: ask an idle one, kill a busy one.

        jupyter_client interrupts (SIGINT) every kernel before asking it to shut down; a
        kernel still finishing its last message then logs "KeyboardInterrupt caught in
        kernel", or leaves its event loop with tasks pending that print "Task was destroyed
        but it is pending!" on the terminal as it exits. The runner stops a kernel after its
        last cell, or during a cell when the runner is interrupted (Ctrl-C): then nbclient's
        tasks polling the cell are cancelled and awaited first, and the kernel is killed with
        its worker processes.
        """
        running = asyncio.all_tasks() - {asyncio.current_task()}
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        try:
            if now or running:
                await self.signal_kernel(signal.SIGKILL)
            else:
                await self.request_shutdown(restart=restart)
            await self.finish_shutdown(restart=restart)
        except ProcessLookupError:
            pass  # the kernel has already exited
        await self.cleanup_resources(restart=restart)


@contextmanager
def _event_loop() -> Iterator[None]:
    """The event loop Papermill drives a kernel from, closed cleanly after the notebook.

    jupyter_core keeps one loop per thread open for good; tasks left on it would be destroyed
    pending at exit ("Task was destroyed but it is pending!"). As ``asyncio.run`` does, what
    is left is cancelled and awaited and the loop closed; the next notebook gets a new one.
    """
    loop = ensure_event_loop()
    try:
        yield
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def execute_notebook(
    notebook: Path, output_dir: Path, parameters: dict[str, Any], timeout: float | None = None
) -> NotebookRun:
    """Execute one notebook with Papermill; raise :class:`NotebookFailed` if a cell raises."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    executed_dir = output_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    final = executed_dir / notebook.name
    failed = executed_dir / f"{notebook.stem}.failed.ipynb"
    for stale in (final, failed):
        stale.unlink(missing_ok=True)
    env_backup = {key: os.environ.get(key) for key in (*_QUIET_ENV, NOTEBOOK_ENV)}
    os.environ.update(_QUIET_ENV)
    os.environ[NOTEBOOK_ENV] = notebook.stem
    start = time.perf_counter()
    try:
        with (_PeakMemory() as memory, atomic_path(final, keep_failed=failed) as partial,
              _event_loop()):
            papermill.execute_notebook(
                str(notebook), str(partial), parameters=parameters, kernel_name="python3",
                cwd=str(notebook.parent), progress_bar=False, log_output=False,
                execution_timeout=timeout, kernel_manager_class=_LocalKernelManager,
            )
    except PapermillExecutionError as error:
        cell = _source_cell_number(failed, error.cell_index)
        first_line = (error.source or "").strip().splitlines()[:1] or [""]
        raise NotebookFailed(
            f"{notebook.name} failed in cell {cell} (`{first_line[0][:60]}`): "
            f"{error.ename}: {error.evalue}\n"
            f"The executed notebook with the traceback is {failed}."
        ) from None
    except DeadKernelError:
        raise NotebookFailed(
            f"{notebook.name}: the kernel died (killed, e.g. out of memory); the notebook "
            f"executed so far is {failed}."
        ) from None
    finally:
        for key, value in env_backup.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return NotebookRun(
        notebook=notebook.stem, status="ok", seconds=round(time.perf_counter() - start, 2),
        peak_memory_mb=round(memory.peak_mb, 1), parameters=parameters,
    )


def _source_cell_number(executed: Path, index: int) -> int:
    """1-based number of a failing cell in the committed notebook (without the injected cell)."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells[:index]
    injected = sum("injected-parameters" in c.metadata.get("tags", []) for c in cells)
    return index - injected + 1


def git_commit(repo: Path) -> str:
    """Current commit of the repository (with ``-dirty`` when the tree has changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_pipeline(
    profile_name: str,
    notebook_dir: str | Path = "notebooks",
    output_root: str | Path = "outputs",
    data_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Execute the notebooks under a profile and write ``<output_root>/<profile>/manifest.json``.

    Args:
        profile_name: Packaged profile name or path of a YAML profile.
        notebook_dir: Directory of the numbered notebooks.
        output_root: Root of generated outputs; the profile's outputs go to a sub-directory.
        data_dir: Benchmark directory; by default (empty) the chapters generate the profile's
            synthetic benchmark. Point it at the real benchmark to run the book on it.
        only: Notebook numbers or stems to run (default all).
        seed: Overrides the profile's seed.
        echo: Where progress lines go.

    Returns:
        The manifest. Raises :class:`NotebookFailed` at the first failing notebook (the manifest
        is written first, with that notebook's status ``failed``; ``interrupted`` on Ctrl-C).

    Raises:
        ValueError, OSError: for a bad profile, notebook selection, parameters cell or
            benchmark (:class:`~glacier_mapping.config.ProfileError`,
            :class:`~glacier_mapping.data.tiles.TileFormatError`, ...), before anything is
            written.
    """
    profile: Profile = load_profile(profile_name, seed=seed)
    notebook_dir = Path(notebook_dir).resolve()
    output_dir = (Path(output_root) / profile.name).resolve()
    data_path = str(Path(data_dir).resolve()) if data_dir else ""
    notebooks = select_notebooks(discover_notebooks(notebook_dir), only)
    parameters = {
        "profile": profile.name if _is_packaged(profile) else str(Path(profile.source).resolve()),
        "data_dir": data_path, "output_dir": str(output_dir), "seed": profile.seed,
    }
    for notebook in notebooks:
        check_declared_parameters(notebook, parameters)
    if data_path:
        check_benchmark(open_benchmark(data_path), output_dir / "cache")
    manifest_path = output_dir / "manifest.json"
    manifest: dict[str, Any] = {
        "profile": profile.as_dict(), "seed": profile.seed, "data_dir": data_path or "synthetic",
        "output_dir": str(output_dir), "git_commit": git_commit(notebook_dir.parent),
        "versions": package_versions(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "cpu": cpu_description(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "notebooks": [], "status": "running",
    }
    store = ArtifactStore(output_dir / "cache")
    total_start = time.perf_counter()
    echo(f"Running {len(notebooks)} notebook(s) under profile '{profile.name}' -> {output_dir}")
    for index, notebook in enumerate(notebooks, start=1):
        echo(f"[{index}/{len(notebooks)}] {notebook.stem} ...")
        events_before = len(store.events())
        try:
            run = execute_notebook(notebook, output_dir, parameters)
        except (NotebookFailed, KeyboardInterrupt) as stop:
            status = "failed" if isinstance(stop, NotebookFailed) else "interrupted"
            manifest["notebooks"].append(
                {"notebook": notebook.stem, "status": status, "error": str(stop) or status,
                 "parameters": parameters}
            )
            manifest["status"] = status
            atomic_write_json(manifest_path, manifest)
            echo(f"{'FAIL' if status == 'failed' else 'STOP'} {notebook.stem}")
            raise
        events = store.events()[events_before:]
        # Distinct artifacts: one computed by a worker process and then read by the
        # notebook counts once, as computed.
        computed = {(e["kind"], e["key"]) for e in events if not e["reused"]}
        run.artifacts_computed = len(computed)
        run.artifacts_reused = len({(e["kind"], e["key"]) for e in events} - computed)
        manifest["notebooks"].append(run.__dict__)
        echo(
            f"ok   {run.seconds:7.1f} s  {run.peak_memory_mb:7.0f} MB  {notebook.stem}  "
            f"(artifacts reused {run.artifacts_reused}, computed {run.artifacts_computed})"
        )
    manifest["total_notebook_seconds"] = round(
        sum(nb["seconds"] for nb in manifest["notebooks"]), 2
    )
    manifest["wall_seconds"] = round(time.perf_counter() - total_start, 2)
    manifest["status"] = "ok"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if only:
        manifest = _merge_partial_run(manifest_path, manifest)
    atomic_write_json(manifest_path, manifest)
    echo(
        f"Done: {len(notebooks)} notebook(s), {manifest['total_notebook_seconds']:.0f} s of "
        f"notebook time; manifest {manifest_path}"
    )
    return manifest


def _is_packaged(profile: Profile) -> bool:
    return Path(profile.source).parent.name == "profiles" and "glacier_mapping" in profile.source


def _merge_partial_run(manifest_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fold an ``--only`` run into the previous manifest, replacing the re-run notebooks."""
    if not manifest_path.is_file():
        return manifest
    previous = json.loads(manifest_path.read_text())
    rerun = {nb["notebook"] for nb in manifest["notebooks"]}
    kept = [nb for nb in previous.get("notebooks", []) if nb["notebook"] not in rerun]
    merged = {**manifest, "notebooks": sorted(kept + manifest["notebooks"],
                                              key=lambda nb: nb["notebook"])}
    merged["total_notebook_seconds"] = round(
        sum(nb.get("seconds", 0.0) for nb in merged["notebooks"]), 2
    )
    if any(nb.get("status") != "ok" for nb in merged["notebooks"]):
        merged["status"] = "failed"
    return merged

