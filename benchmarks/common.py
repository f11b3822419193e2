"""Shared helpers of the benchmark scripts: environment, timing, synthetic inputs, result rows.

Importing this module sets the TensorFlow environment (quiet logs, oneDNN off) unless the
caller already set it, so import it before TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

# run_all.py stops a script that runs out of time with SIGTERM: exit cleanly, so that
# temporary directories are removed.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
if "tensorflow" in sys.modules:  # pragma: no cover - a mistake in a script's import order
    print("warning: TensorFlow was imported before benchmarks/common.py", file=sys.stderr)

import numpy as np  # noqa: E402

from glacier_mapping.data.regions import get_region  # noqa: E402
from glacier_mapping.data.scenes import normalise_features  # noqa: E402
from glacier_mapping.data.synthetic import generate_scene  # noqa: E402
from glacier_mapping.data.tiles import NormStats  # noqa: E402
from glacier_mapping.store import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "outputs" / "benchmarks"
PARTS_DIR = OUT_DIR / "parts"
COLUMNS = ("benchmark", "case", "metric", "value", "unit", "method")
#: Sensors of the paper's 10.03 M-parameter GlaViTU (optical + DEM).
SENSORS = ("optical", "dem")


@dataclass(frozen=True)
class Row:
    """One measured figure."""

    benchmark: str
    case: str
    metric: str
    value: float
    unit: str
    method: str


def child_memory_rows(benchmark: str, case: str, result: dict, sampled_mb: float) -> list[Row]:
    """Peak and post-import RSS reported by a child process, and its peak sampled from outside."""
    return [
        Row(benchmark, case, "peak_rss_mb", result["peak_mb"], "MB",
            "child's VmHWM (RSS high-water mark) after deploy_scene"),
        Row(benchmark, case, "rss_after_imports_mb", result["baseline_mb"], "MB",
            "child's VmRSS after importing TensorFlow and the library"),
        Row(benchmark, case, "psutil_sampled_peak_rss_mb", sampled_mb, "MB",
            "parent samples the child's RSS every 50 ms (whole child process)"),
    ]


def proc_status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field} (not Linux?)")


def timed(fn: Callable[[], object], warmup: int, reps: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times; return the wall seconds."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Iterable[float]) -> float:
    """Median of the values."""
    return float(statistics.median(list(values)))


def timing_method(warmup: int, reps: int) -> str:
    """The standard wording of a timing method."""
    return f"{warmup} warm-up excluded, median of {reps} reps"


def synthetic_physical(size: int, seed: int = 0, region: str = "ALP") -> dict[str, np.ndarray]:
    """Optical and DEM arrays (physical units, ``(H, W, C)``) of a synthetic scene.

    The DEM has two channels (elevation, slope) as in the tile schema.
    """
    scene = generate_scene(get_region(region), size, seed, get_region(region).year)
    return {name: scene.features[name] for name in SENSORS}


def synthetic_features(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised (paper ranges) optical + DEM features of a ``size x size`` synthetic scene."""
    features, _ = normalise_features(synthetic_physical(size, seed), NormStats.paper())
    return features


def crop(features: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """The top-left ``height x width`` part of every array."""
    return {name: np.ascontiguousarray(a[:height, :width]) for name, a in features.items()}


def parse_args(description: str) -> argparse.Namespace:
    """Common command line: ``--quick`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of this script's rows")
    return parser.parse_args()


def write_rows(rows: Iterable[Row], path: Path) -> None:
    """Write rows as CSV with the standard columns (atomically)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    atomic_write_text(path, buffer.getvalue())


def finish(name: str, rows: list[Row], out: Path | None) -> None:
    """Print the rows and write them to ``out`` (default ``outputs/benchmarks/parts``)."""
    for row in rows:
        print(f"{row.case:>28}  {row.metric:<28} {row.value:>12.4g} {row.unit}")
    write_rows(rows, out or PARTS_DIR / f"{name}.csv")
