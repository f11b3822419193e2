"""Experiments trained in worker processes: the same weights however they are grouped."""

import dataclasses
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from glacier_mapping.chapters.glavitu_training import predict_test
from glacier_mapping.config import ProfileError, load_profile
from glacier_mapping.data.benchmark import BenchmarkFiles
from glacier_mapping.data.tiles import make_tile, write_tiles
from glacier_mapping.experiments.runner import train_experiment, train_experiments
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.predictions import predict_split
from glacier_mapping.scheduling import available_cores, run_groups, worker_threads
from glacier_mapping.store import ArtifactStore
from glacier_mapping.workflow import Context

SIZE, PATCH = 32, 16


def _tile(name, region, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[: SIZE // 2] = 1
    features = {"optical": rng.random((SIZE, SIZE, 6), dtype=np.float32),
                "dem": rng.random((SIZE, SIZE, 2), dtype=np.float32)}
    features["optical"][: SIZE // 2] += 0.5  # glacier is brighter: something to learn
    return make_tile(name, region, features, labels, (0.0, 1.0, 0.0, 1.0), PATCH)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    for index, split in enumerate(("train", "val", "test")):
        tiles = [_tile(f"ALP-{index}-0", "ALP", index), _tile(f"NZ-{index}-0", "NZ", 9 + index)]
        write_tiles(root / f"{split}.hdf5", tiles)
    return BenchmarkFiles(root, root / "train.hdf5", root / "val.hdf5", root / "test.hdf5",
                          None, None, [])


def _context(benchmark, out, workers):
    profile = load_profile("smoke")
    profile = dataclasses.replace(
        profile, training=dataclasses.replace(profile.training, parallel_experiments=workers))
    return Context(profile, out, ArtifactStore(out / "cache"), benchmark, "k", True)


def _specs(**changes):
    common = dict(architecture="deeplab", preset="tiny", patch_size=PATCH, batch_size=2,
                  epochs=2, steps_per_epoch=2, restart_epochs=(2,), batchnorm_momentum=0.9)
    common.update(changes)
    return [
        ExperimentSpec(name="both-seed1", sensors=("optical", "dem"), seed=1, **common),
        ExperimentSpec(name="optical-seed1", sensors=("optical",), seed=1, **common),
        ExperimentSpec(name="both-seed2", sensors=("optical", "dem"), seed=2, **common),
    ]


def test_training_together_equals_training_one_at_a_time_and_reruns_train_nothing(
        benchmark, tmp_path, capsys):
    together_ctx = _context(benchmark, tmp_path / "together", workers=2)
    together = train_experiments(together_ctx, _specs(), after=predict_test)
    printed = capsys.readouterr().out
    # One at a time, as a chapter run alone would: each model still trains in a worker.
    alone_ctx = _context(benchmark, tmp_path / "alone", workers=2)
    alone = [train_experiment(alone_ctx, spec) for spec in _specs()]

    assert [m.spec.name for m in together] == ["both-seed1", "optical-seed1", "both-seed2"]
    for name in ("both-seed1", "optical-seed1", "both-seed2"):  # workers print whole groups
        assert printed.count(f"Training {name} ") == 1
    for one, other in zip(together, alone, strict=True):
        first = keras.saving.load_model(one.model_path).get_weights()
        second = keras.saving.load_model(other.model_path).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    # The follow-up ran in the workers: the test predictions are already in the store.
    events = together_ctx.store.events()
    assert sum(e["kind"] == "predictions" and not e["reused"] for e in events) == 3
    # ... made by the model still in memory after training, the same as from its saved file.
    for one, other in zip(together, alone, strict=True):
        kept = np.load(predict_split(together_ctx, one, "test").file("probs.npz"))
        loaded = np.load(predict_split(alone_ctx, other, "test").file("probs.npz"))
        assert all(np.array_equal(kept[name], loaded[name]) for name in loaded.files)
    events = together_ctx.store.events()

    again = train_experiments(together_ctx, _specs(), after=predict_test)
    new_events = together_ctx.store.events()[len(events):]
    assert new_events and all(e["reused"] for e in new_events)
    assert [m.artifact.key for m in again] == [m.artifact.key for m in together]


def _record_process(context, item):
    """A run_groups task: write this process's id and TensorFlow thread count."""
    import tensorflow as tf

    threads = tf.config.threading.get_intra_op_parallelism_threads()
    Path(item).write_text(f"{os.getpid()} {threads}")


def test_even_a_single_task_runs_in_a_worker_with_its_share_of_the_cores(benchmark, tmp_path):
    ctx = _context(benchmark, tmp_path, workers=2)
    record = tmp_path / "record.txt"
    run_groups(ctx, _record_process, [[str(record)]])
    pid, threads = map(int, record.read_text().split())
    assert pid != os.getpid()
    assert threads == worker_threads(ctx) == max(1, available_cores() // 2)

    run_groups(_context(benchmark, tmp_path, workers=1), _record_process, [[str(record)]])
    assert int(record.read_text().split()[0]) == os.getpid()


def test_a_failure_in_a_worker_reaches_the_caller(benchmark, tmp_path):
    ctx = _context(benchmark, tmp_path, workers=2)
    specs = _specs(epochs=1, restart_epochs=(1,))[:2]
    specs[1] = dataclasses.replace(specs[1], sensors=("optical", "thermal"))  # tiles lack it
    with pytest.raises(ValueError, match="thermal"):
        train_experiments(ctx, specs)


def test_profile_rejects_a_bad_worker_count(tmp_path):
    text = Path(load_profile("smoke").source).read_text()
    text = text.replace("training:\n", "training:\n  parallel_experiments: 0\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ProfileError, match="parallel_experiments"):
        load_profile(str(bad))
