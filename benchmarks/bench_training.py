"""Figure 2: training patches/s per preset next to the data pipeline's patches/s.

Train steps are compiled as ``train_model`` compiles them (``training._compile``: Adam with the
cosine-restart schedule, focal loss on both heads, glacier IoU, no XLA, op determinism on) and
run with ``train_on_batch`` on one fixed in-memory batch, so they exclude data loading. The
data pipeline is ``make_patch_dataset`` in random mode with the paper's augmentations on
synthetic tiles, timed with ``measure_throughput``. If the pipeline makes patches faster than
the model consumes them, training does not wait on data (``prefetch(2)`` overlaps the two).
"""

from __future__ import annotations

import common
import keras
import numpy as np
import tensorflow as tf
from common import Row

from glacier_mapping.data.patches import make_patch_dataset, measure_throughput
from glacier_mapping.data.regions import get_region
from glacier_mapping.data.scenes import normalise_features
from glacier_mapping.data.synthetic import generate_scene
from glacier_mapping.data.tiles import NormStats, make_tile
from glacier_mapping.models import build_model
from glacier_mapping.training import TrainConfig, _compile, _output_heads

TILE_SIZE = 512


def cases(quick: bool) -> list[tuple[str, int, int]]:
    """(preset, patch size, batch size): the paper's 384 px, the quick profile's 64 px."""
    if quick:
        return [("tiny", 64, 8)]
    return [("paper", 384, 1), ("small", 64, 8), ("tiny", 64, 8)]


def train_rate(preset: str, patch: int, batch: int, quick: bool) -> tuple[float, str]:
    """Median patches/s of compiled train steps."""
    keras.utils.set_random_seed(0)
    model = build_model("glavitu", common.SENSORS, patch, preset)
    _compile(model, _output_heads(model), TrainConfig(epochs=10, steps_per_epoch=100))
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((batch, *tensor.shape[1:]), dtype=np.float32)
              for name, tensor in model.input.items()}
    glacier = (rng.random((batch, patch, patch)) < 0.3).astype(np.float32)
    target = np.stack([1.0 - glacier, glacier], axis=-1) * 0.9 + 0.05
    targets = {"output": target, "deepsupervision": target}
    warmup, reps = 1, (1 if preset == "paper" else 2 if quick else 5)
    seconds = common.median(common.timed(
        lambda: model.train_on_batch(inputs, targets), warmup, reps))
    method = (f"train_on_batch, batch {batch} of {patch} px, compiled as in train_model "
              f"(first step traces); {common.timing_method(warmup, reps)}")
    return batch / seconds, method


def data_rate(tiles: list, patch: int, batch: int, quick: bool) -> tuple[float, str]:
    """Median patches/s of the augmented random-mode patch pipeline."""
    dataset = make_patch_dataset(tiles, common.SENSORS, patch, batch, mode="random",
                                 augment=True, seed=0)
    batches = 4 if quick else max(4, (64 if patch <= 64 else 24) // batch)
    warmup, reps = 1, (1 if quick else 3)
    rates = [measure_throughput(dataset, batches)["patches_per_second"]
             for _ in range(warmup + reps)][warmup:]
    method = (f"make_patch_dataset random mode, augment=True, batch {batch} of {patch} px, "
              f"{len(tiles)} synthetic {TILE_SIZE} px tiles; measure_throughput over {batches} "
              f"batches (includes iterator start-up); {common.timing_method(warmup, reps)}")
    return common.median(rates), method


def synthetic_tiles(quick: bool) -> list:
    """Normalised optical + DEM tiles with labels from synthetic scenes of two regions."""
    tiles = []
    for index, code in enumerate(("ALP",) if quick else ("ALP", "HMA")):
        region = get_region(code)
        scene = generate_scene(region, TILE_SIZE, 0, region.year)
        physical = {name: scene.features[name] for name in common.SENSORS}
        features, _ = normalise_features(physical, NormStats.paper())
        tiles.append(make_tile(f"{region.subregion}-{index}-0", code, features, scene.labels,
                               scene.bounds, 64))
    return tiles


def run(quick: bool) -> list[Row]:
    tf.config.experimental.enable_op_determinism()  # as train_model does
    tiles = synthetic_tiles(quick)
    rows, data_cache = [], {}
    for preset, patch, batch in cases(quick):
        case = f"{preset} {patch}px"
        train, train_method = train_rate(preset, patch, batch, quick)
        if (patch, batch) not in data_cache:
            data_cache[(patch, batch)] = data_rate(tiles, patch, batch, quick)
        data, data_method = data_cache[(patch, batch)]
        rows += [
            Row("training", case, "train_patches_per_s", train, "patches/s", train_method),
            Row("training", case, "data_patches_per_s", data, "patches/s", data_method),
            Row("training", case, "data_to_train_ratio", data / train, "ratio",
                "data_patches_per_s / train_patches_per_s (> 1: training does not wait on "
                "data, measured separately; on 2 cores the two still share the CPU)"),
        ]
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("training", run(args.quick), args.out)
