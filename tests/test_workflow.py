"""What every chapter does first: the Context, the data fingerprint and open_context."""

import logging
import os

import h5py
import numpy as np
import pandas as pd
import pytest

from glacier_mapping.config import load_profile
from glacier_mapping.data.benchmark import BenchmarkFiles
from glacier_mapping.data.tiles import NormStats, TileFormatError, make_tile, write_tiles
from glacier_mapping.metrics import COLUMNS, count_rows
from glacier_mapping.store import ArtifactStore
from glacier_mapping.workflow import (
    BENCHMARK_CHECK,
    Context,
    check_benchmark,
    data_fingerprint,
    open_context,
    quiet_tensorflow,
)

SIZE, PATCH = 16, 16


def _tile(name, region, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((SIZE, SIZE)) > 0.5).astype(np.uint8)
    features = {"optical": rng.random((SIZE, SIZE, 6), dtype=np.float32),
                "dem": rng.random((SIZE, SIZE, 2), dtype=np.float32)}
    return make_tile(name, region, features, labels, (0.0, 1.0, 0.0, 1.0), PATCH)


def _write_benchmark(root, with_stats=True):
    root.mkdir(parents=True, exist_ok=True)
    for index, split in enumerate(("train", "val", "test")):
        write_tiles(root / f"{split}.hdf5", [_tile(f"ALP-{index}-0", "ALP", index),
                                            _tile(f"NZ-{index}-0", "NZ", 10 + index)])
    if with_stats:
        NormStats({"dem": [0.0, 0.0]}, {"dem": [1.0, 1.0]}).to_json(root / "norm_stats.json")
    return BenchmarkFiles(root, root / "train.hdf5", root / "val.hdf5", root / "test.hdf5",
                          root / "norm_stats.json" if with_stats else None, None, [])


@pytest.fixture
def bench(tmp_path):
    return _write_benchmark(tmp_path / "bench")


@pytest.fixture
def ctx(tmp_path, bench):
    out = tmp_path / "outputs" / "smoke"
    return Context(load_profile("smoke", seed=5), out, ArtifactStore(out / "cache"), bench,
                   "key", False)


def test_context_paths_and_seed(ctx, tmp_path):
    out = tmp_path / "outputs" / "smoke"
    assert ctx.seed == 5
    assert ctx.metrics_path("03_strategy_comparison") == (
        out / "metrics" / "03_strategy_comparison.csv")
    assert ctx.figure_path("errors.png") == out / "figures" / "errors.png"


def test_write_metrics_writes_every_column(ctx):
    rows = count_rows({"tp": 3, "fp": 1, "fn": 0, "tn": 6}, experiment="e", region="ALP")
    path = ctx.write_metrics("02_glavitu_training", rows)
    assert path == ctx.metrics_path("02_glavitu_training")
    frame = pd.read_csv(path, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert (frame["chapter"] == "02_glavitu_training").all()
    assert list(frame["metric"]) == ["iou", "precision", "recall"]
    assert frame.set_index("metric").loc["iou", "value"] == pytest.approx(0.75)
    assert (frame["split"] == "").all()  # columns that do not apply are empty
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically


def test_data_fingerprint_is_stable_and_follows_the_files(tmp_path, bench):
    first = data_fingerprint(bench)
    assert len(first) == 16 and int(first, 16) >= 0
    assert data_fingerprint(bench) == first
    # The same content in another directory has the same fingerprint.
    assert data_fingerprint(_write_benchmark(tmp_path / "copy")) == first
    # Files that are absent (no statistics) are skipped, and change the fingerprint.
    assert data_fingerprint(_write_benchmark(tmp_path / "nostats", with_stats=False)) != first
    # A changed file changes it, even at the same size.
    stats = bench.norm_stats.read_text()
    bench.norm_stats.write_text(stats.replace('"min"', '"mIn"'))
    assert len(bench.norm_stats.read_text()) == len(stats)
    changed = data_fingerprint(bench)
    assert changed != first
    bench.norm_stats.write_text(stats)
    assert data_fingerprint(bench) == first
    write_tiles(bench.test, [_tile("ALP-2-0", "ALP", 99)])
    assert data_fingerprint(bench) not in (first, changed)


def test_quiet_tensorflow_keeps_an_explicit_setting(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    logger = logging.getLogger("tensorflow")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert logger.level == logging.ERROR
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_open_context_with_a_data_dir(tmp_path, bench):
    out = tmp_path / "out"
    ctx = open_context("smoke", data_dir=bench.root, output_dir=out, seed=9)
    assert ctx.profile.name == "smoke" and ctx.seed == 9
    assert ctx.output_dir == out and out.is_dir()
    assert ctx.store.root == out / "cache" and ctx.store.root.is_dir()
    assert ctx.benchmark.train == bench.train and ctx.benchmark.norm_stats == bench.norm_stats
    assert ctx.data_key == data_fingerprint(bench) and not ctx.synthetic
    assert not (out / "cache" / "benchmark").exists()  # nothing generated
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_context("smoke", data_dir=tmp_path / "missing", output_dir=out)


def test_open_context_defaults_to_outputs_beside_the_notebooks(tmp_path, bench, monkeypatch):
    notebooks = tmp_path / "repo" / "notebooks"
    notebooks.mkdir(parents=True)
    monkeypatch.chdir(notebooks)
    ctx = open_context("quick", data_dir=bench.root)
    assert ctx.output_dir.resolve() == tmp_path / "repo" / "outputs" / "quick"
    assert (tmp_path / "repo" / "outputs" / "quick" / "cache").is_dir()


def test_open_context_generates_the_synthetic_benchmark_once(tmp_path):
    out = tmp_path / "out"
    ctx = open_context("smoke", output_dir=out)
    assert ctx.synthetic
    assert ctx.benchmark.root.parent == out / "cache" / "benchmark"
    assert ctx.data_key == ctx.benchmark.root.name  # the artifact's key
    for path in (ctx.benchmark.train, ctx.benchmark.val, ctx.benchmark.test,
                 ctx.benchmark.norm_stats, ctx.benchmark.independent):
        assert path.is_file()
    again = open_context("smoke", output_dir=out)
    assert again.data_key == ctx.data_key and again.benchmark.root == ctx.benchmark.root
    events = [e for e in ctx.store.events() if e["kind"] == "benchmark"]
    assert [e["reused"] for e in events] == [False, True]


def test_the_benchmark_is_checked_once_per_fingerprint(tmp_path, bench, monkeypatch):
    checks = []
    validate = BenchmarkFiles.validate
    monkeypatch.setattr(BenchmarkFiles, "validate", lambda self: checks.append(1) or
                        validate(self))
    out = tmp_path / "out"
    first = open_context("smoke", data_dir=bench.root, output_dir=out)
    again = open_context("smoke", data_dir=bench.root, output_dir=out)
    assert len(checks) == 1 and first.data_key == again.data_key
    events = [e["reused"] for e in first.store.events() if e["kind"] == BENCHMARK_CHECK]
    assert events == [False, True]


def test_a_broken_tile_is_refused_when_the_benchmark_is_opened(tmp_path, bench):
    with h5py.File(bench.train, "a") as handle:
        del handle["NZ-0-0"]["optical"]
        handle["NZ-0-0"].create_dataset("optical", data=np.zeros((10, 10, 6), np.float32))
    expected = r"train.hdf5, tile NZ-0-0: 'optical' has shape \(10, 10, 6\), expected"
    with pytest.raises(TileFormatError, match=expected):
        open_context("smoke", data_dir=bench.root, output_dir=tmp_path / "out")
    with pytest.raises(TileFormatError, match=expected):
        check_benchmark(bench, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # a failed check leaves nothing behind
    assert not (tmp_path / "out" / "cache" / BENCHMARK_CHECK).exists()
