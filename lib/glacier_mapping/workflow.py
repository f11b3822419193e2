"""What every chapter does first: load the profile, open the artifact store, open the benchmark.

A chapter calls :func:`open_context` with its Papermill parameters and gets a :class:`Context`
holding the profile, the artifact store, the benchmark files and a fingerprint of the data that
keys every model trained on it. With ``data_dir`` empty the synthetic benchmark of the profile
is generated (once, through the store); otherwise ``data_dir`` is opened as is (the real
benchmark or any directory in its layout). Either way its tile files are checked once per data
fingerprint (:func:`check_benchmark`), before any chapter reads them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from glacier_mapping.config import Profile, load_profile
from glacier_mapping.data.benchmark import BenchmarkFiles, build_benchmark, open_benchmark
from glacier_mapping.distribute import training_strategy
from glacier_mapping.metrics import write_metrics
from glacier_mapping.store import ArtifactStore

_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}
#: Artifact kind recording that a benchmark passed :func:`check_benchmark`.
BENCHMARK_CHECK = "benchmark_check"


@dataclass(frozen=True)
class Context:
    """Everything a chapter needs to find and share artifacts.

    Attributes:
        profile: The run profile.
        output_dir: ``outputs/<profile>``.
        store: The artifact cache under ``output_dir/cache``.
        benchmark: Paths of the benchmark files.
        data_key: Fingerprint of the benchmark; enters the key of every model trained on it.
        synthetic: Whether the benchmark is the generated stand-in.
    """

    profile: Profile
    output_dir: Path
    store: ArtifactStore
    benchmark: BenchmarkFiles
    data_key: str
    synthetic: bool

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.profile.seed

    def metrics_path(self, chapter: str) -> Path:
        """Where a chapter's tidy metrics go."""
        return self.output_dir / "metrics" / f"{chapter}.csv"

    def write_metrics(self, chapter: str, rows: pd.DataFrame) -> Path:
        """Write a chapter's tidy metrics (:func:`glacier_mapping.metrics.write_metrics`)."""
        return write_metrics(self.metrics_path(chapter), chapter, rows)

    def figure_path(self, name: str) -> Path:
        """Where a chapter's static figures go."""
        return self.output_dir / "figures" / name


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and oneDNN start-up logs and its Python logger below errors."""
    for key, value in _QUIET.items():
        os.environ.setdefault(key, value)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def data_fingerprint(files: BenchmarkFiles) -> str:
    """A cheap, stable fingerprint of benchmark files: names, sizes and their first megabyte."""
    digest = hashlib.sha256()
    for path in (files.train, files.val, files.test, files.norm_stats, files.independent):
        if path is None:
            continue
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def check_benchmark(files: BenchmarkFiles, cache: Path) -> str:
    """Validate a benchmark once per data fingerprint; return the fingerprint.

    The check (:meth:`BenchmarkFiles.validate`) is recorded in the artifact store at ``cache``,
    so later chapters skip it; a benchmark that fails it leaves nothing behind.

    Raises:
        TileFormatError: naming the file, the tile, the field and the fix.
        ValueError: if ``norm_stats.json`` is not valid statistics.
    """
    key = data_fingerprint(files)
    params = {"data": key}
    checked = cache.is_dir() and ArtifactStore(cache).exists(BENCHMARK_CHECK, params)
    tiles = {} if checked else files.validate()
    ArtifactStore(cache).get_or_create(BENCHMARK_CHECK, params, lambda _: {"tiles": tiles})
    return key


def open_context(
    profile: str, data_dir: str | Path = "", output_dir: str | Path = "", seed: int | None = None
) -> Context:
    """Load the profile, open the store and open or generate and check the benchmark.

    Args:
        profile: Profile name or YAML path.
        data_dir: The benchmark directory; empty for the profile's synthetic benchmark.
        output_dir: ``outputs/<profile>``; empty for ``outputs/<profile>`` under the cwd's repo.
        seed: Overrides the profile's seed.
    """
    quiet_tensorflow()
    loaded = load_profile(profile, seed=seed)
    if loaded.training.distribute == "multi-worker":
        training_strategy("multi-worker")  # TensorFlow's rule: before any other TF work
    out = Path(output_dir) if str(output_dir) else Path("..") / "outputs" / loaded.name
    out.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(out / "cache")
    if str(data_dir):
        files = open_benchmark(Path(data_dir))
        return Context(loaded, out, store, files, check_benchmark(files, store.root),
                       synthetic=False)
    spec = loaded.data
    artifact = store.get_or_create(
        "benchmark", spec.to_dict(), lambda tmp: {"summary": str(build_benchmark(spec, tmp).root)}
    )
    files = open_benchmark(artifact.path)
    check_benchmark(files, store.root)
    return Context(loaded, out, store, files, artifact.key, synthetic=True)
