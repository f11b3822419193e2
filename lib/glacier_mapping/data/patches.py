"""Patches for training and evaluation as a tf.data pipeline, with the paper's augmentations.

Tiles are held in memory (our profiles' files are small); patches are cut and augmented with
numpy in a seeded generator and handed to TensorFlow through ``tf.data``. Each element is
``(inputs, targets)``: ``inputs`` maps sensor names (and optionally ``"location"``) to float32
batches, ``targets`` maps ``"output"`` (and ``"deepsupervision"``) to label-smoothed one-hot
batches. Label smoothing ``y * (1 - s) + s / 2`` is applied only inside the tile; padding keeps
``[0, 0]`` targets so it adds nothing to a cross-entropy or focal loss.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from glacier_mapping.data.schema import (
    COORDINATE_VECTOR_SIZE,
    LOCATION_INPUT,
    LOCATION_SLOTS,
    NUM_CLASSES,
    REGION_VECTOR_SIZE,
    SENSOR_CHANNELS,
    UNKNOWN_REGION,
    check_sensors,
)
from glacier_mapping.data.tiles import Tile, iter_tiles

Location = Literal["region", "coordinates"] | None


def region_vector(code: str) -> np.ndarray:
    """One-hot region vector of 12 entries (11 regions + unknown) as float32.

    Raises:
        ValueError: for a code that is neither a region nor ``UNKNOWN``.
    """
    if code not in LOCATION_SLOTS:
        raise ValueError(f"Unknown region {code!r}; expected one of {list(LOCATION_SLOTS)}.")
    vector = np.zeros(REGION_VECTOR_SIZE, dtype=np.float32)
    vector[LOCATION_SLOTS.index(code)] = 1.0
    return vector


def coordinate_vector(lat: float, lon: float) -> np.ndarray:
    """``[sin lat, cos lat, sin lon, cos lon]`` with lat/lon in degrees converted to radians."""
    lat_rad, lon_rad = np.radians(lat), np.radians(lon)
    return np.array(
        [np.sin(lat_rad), np.cos(lat_rad), np.sin(lon_rad), np.cos(lon_rad)], dtype=np.float32
    )


def patch_centre(tile: Tile, row: float, col: float) -> tuple[float, float]:
    """Latitude and longitude of a point given in padded-tile pixel coordinates (edges at 0).

    The tile bounds cover the unpadded tile; latitude falls from ``ymax`` at the top edge to
    ``ymin`` at the bottom edge and longitude rises from ``xmin`` to ``xmax`` (linear).
    """
    top, left = tile.padding
    height, width = tile.original_shape
    xmin, xmax, ymin, ymax = tile.bounds
    lat = ymax - (row - top) / height * (ymax - ymin)
    lon = xmin + (col - left) / width * (xmax - xmin)
    return float(lat), float(lon)


def smooth_labels(labels: np.ndarray, valid: np.ndarray, smoothing: float) -> np.ndarray:
    """``y * (1 - s) + s / 2`` on valid pixels; padding stays all-zero."""
    smoothed = labels * (1.0 - smoothing) + smoothing / NUM_CLASSES
    return np.where(valid[..., None], smoothed, 0.0).astype(np.float32)


class _Sampler:
    """Cuts (and in random mode augments) patches from in-memory tiles."""

    def __init__(
        self,
        tiles: Sequence[Tile],
        sensors: tuple[str, ...],
        patch_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.tiles = tiles
        self.sensors = sensors
        self.patch_size = patch_size
        self.rng = rng

    def cut(
        self, tile: Tile, row: int, col: int, size: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Features, labels and valid mask of a window (zero-filled outside the tile)."""
        height, width = tile.shape
        pad_r, pad_c = max(0, row + size - height), max(0, col + size - width)
        window = (slice(row, row + size), slice(col, col + size))

        def take(array: np.ndarray) -> np.ndarray:
            part = array[window]
            if pad_r or pad_c:
                pads = ((0, pad_r), (0, pad_c)) + ((0, 0),) * (part.ndim - 2)
                part = np.pad(part, pads)
            return part

        features = {sensor: take(tile.features[sensor]) for sensor in self.sensors}
        return features, take(tile.labels), take(tile.valid)

    def augment(
        self, features: dict[str, np.ndarray], labels: np.ndarray, valid: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, tuple[float, float]]:
        """The paper's augmentations; also returns the centre offset of a random crop."""
        rng, size = self.rng, self.patch_size
        arrays = {**features, "__labels": labels, "__valid": valid}
        centre = (size / 2.0, size / 2.0)
        if rng.random() < 0.5:  # crop 80-100 % and rescale back (nearest neighbour)
            crop = int(rng.integers(int(np.ceil(0.8 * size)), size + 1))
            r0, c0 = rng.integers(0, size - crop + 1, size=2)
            index = (np.arange(size) * crop // size).astype(int)
            rows, cols = r0 + index, c0 + index
            arrays = {k: v[rows][:, cols] for k, v in arrays.items()}
            centre = (r0 + crop / 2.0, c0 + crop / 2.0)
        if rng.random() < 0.5:
            arrays = {k: v[::-1] for k, v in arrays.items()}
        if rng.random() < 0.5:
            arrays = {k: v[:, ::-1] for k, v in arrays.items()}
        if rng.random() < 0.75:
            turns = int(rng.integers(1, 4))
            arrays = {k: np.rot90(v, turns, axes=(0, 1)) for k, v in arrays.items()}
        labels, valid = arrays.pop("__labels"), arrays.pop("__valid")
        out = {}
        for sensor, array in arrays.items():
            array = np.ascontiguousarray(array, dtype=np.float32)
            channels = array.shape[-1]
            if rng.random() < 0.5:  # per-channel gamma contrast in [0.8, 1.2]
                gamma = rng.uniform(0.8, 1.2, channels).astype(np.float32)
                array = np.sign(array) * np.abs(array) ** gamma
            if rng.random() < 0.5:  # occlusion up to half a patch
                h, w = rng.integers(1, size // 2 + 1, size=2)
                r, c = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
                array[r : r + h, c : c + w] = 0.0
            if rng.random() < 0.5:  # Gaussian per-channel shift
                array = array + rng.normal(0.0, 0.025, channels).astype(np.float32)
            if rng.random() < 0.5:  # Gaussian pixel noise
                array = array + rng.normal(0.0, 0.005, array.shape).astype(np.float32)
            out[sensor] = array.astype(np.float32)
        return out, np.ascontiguousarray(labels), np.ascontiguousarray(valid), centre


def _load(
    tiles: str | Path | Sequence[Tile], sensors: tuple[str, ...], regions: Sequence[str] | None
) -> list[Tile]:
    """Tiles from a file (only the requested sensors) or a list, with labels checked."""
    if isinstance(tiles, str | Path):
        loaded = list(iter_tiles(tiles, sensors=sensors, regions=regions))
        source = str(tiles)
    else:
        loaded = [t for t in tiles if regions is None or t.region in regions]
        source = "the tile list"
    if not loaded:
        raise ValueError(f"No tiles found in {source} (regions={regions}).")
    for tile in loaded:
        missing = [s for s in sensors if s not in tile.features]
        if missing:
            raise ValueError(
                f"Tile {tile.name} lacks sensor(s) {missing}; it has {sorted(tile.features)}."
            )
        if tile.labels is None:
            raise ValueError(f"Tile {tile.name} has no labels; patches need 'outlines'.")
    return loaded


def _windows(tile: Tile, patch_size: int) -> list[tuple[int, int]]:
    """Non-overlapping windows covering a tile; the last row/column is shifted inside."""
    height, width = tile.shape
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"Tile {tile.name} ({height}x{width}) is smaller than patch_size={patch_size}."
        )

    def starts(extent: int) -> list[int]:
        values = list(range(0, extent - patch_size + 1, patch_size))
        if values[-1] + patch_size < extent:
            values.append(extent - patch_size)
        return values

    return [(r, c) for r in starts(height) for c in starts(width)]


def count_patches(tiles: Sequence[Tile], patch_size: int) -> int:
    """Number of non-overlapping patches (the basis of the paper's epoch length)."""
    return sum(len(_windows(tile, patch_size)) for tile in tiles)


def _options_without_autotune() -> tf.data.Options:
    """tf.data options with autotuning off (the pipeline has no AUTOTUNE parameter).

    Autotuning runs a model thread whose wait grows up to a minute; destroying an iterator
    waits for it, so ``fit`` stalled 15-60 s at its end (gdb: ``~RootDataset::Iterator``
    waiting on ``model::Model::OptimizeLoop``) on a 2-core CPU.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


_WITHOUT_AUTOTUNE = _options_without_autotune()


def make_patch_dataset(
    tiles: str | Path | Sequence[Tile],
    sensors: Sequence[str],
    patch_size: int,
    batch_size: int,
    mode: Literal["random", "sequential"] = "random",
    augment: bool = True,
    label_smoothing: float = 0.1,
    location: Location = None,
    unknown_region_rate: float | None = None,
    deep_supervision: bool = True,
    seed: int = 0,
    steps: int | None = None,
    regions: Sequence[str] | None = None,
) -> tf.data.Dataset:
    """A batched dataset of ``(inputs, targets)`` patches.

    Args:
        tiles: an HDF5 tile file or a list of tiles (held in memory).
        sensors: sensor groups to feed (canonical order is applied).
        patch_size: patch height and width in pixels.
        batch_size: patches per batch.
        mode: ``random`` draws random tiles and positions forever (or ``steps`` batches);
            ``sequential`` walks non-overlapping patches of every tile in order, once.
        augment: apply the paper's augmentations (random mode only).
        label_smoothing: ``s`` in ``y * (1 - s) + s / 2``.
        location: ``None``; ``"region"`` adds a 12-entry region one-hot; ``"coordinates"``
            adds ``[sin lat, cos lat, sin lon, cos lon]`` (radians) of the patch centre.
        unknown_region_rate: share of patches whose region is replaced by ``UNKNOWN``;
            ``None`` means 0.1 in random mode and 0 in sequential mode.
        deep_supervision: also yield the ``"deepsupervision"`` target.
        seed: seed of the patch sampler.
        steps: number of batches (random mode: required for a finite dataset; sequential:
            a cap).
        regions: only use tiles of these region codes.

    Returns:
        A ``tf.data.Dataset``; the last sequential batch may be smaller.

    Raises:
        ValueError: for bad arguments or tiles lacking a sensor or labels.
    """
    sensors = check_sensors(list(sensors))
    if mode not in ("random", "sequential"):
        raise ValueError(f"mode={mode!r} must be 'random' or 'sequential'.")
    if location not in (None, "region", "coordinates"):
        raise ValueError(f"location={location!r} must be None, 'region' or 'coordinates'.")
    if patch_size < 1 or batch_size < 1:
        raise ValueError("patch_size and batch_size must be positive integers.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1).")
    rate = unknown_region_rate
    if rate is None:
        rate = 0.1 if mode == "random" else 0.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"unknown_region_rate={unknown_region_rate} must lie in [0, 1].")
    loaded = _load(tiles, sensors, regions)
    for tile in loaded:
        _windows(tile, patch_size)  # raises early for tiles smaller than a patch
    rng = np.random.default_rng(seed)
    sampler = _Sampler(loaded, sensors, patch_size, rng)

    def one(tile: Tile, row: int, col: int, random: bool) -> tuple[dict, dict]:
        features, labels, valid = sampler.cut(tile, row, col, patch_size)
        centre = (patch_size / 2.0, patch_size / 2.0)
        if random and augment:
            features, labels, valid, centre = sampler.augment(features, labels, valid)
        inputs = dict(features)
        if location == "region":
            code = UNKNOWN_REGION if rate and rng.random() < rate else tile.region
            inputs[LOCATION_INPUT] = region_vector(code)
        elif location == "coordinates":
            inputs[LOCATION_INPUT] = coordinate_vector(
                *patch_centre(tile, row + centre[0], col + centre[1])
            )
        target = smooth_labels(labels, valid, label_smoothing)
        targets = {"output": target}
        if deep_supervision:
            targets["deepsupervision"] = target
        return inputs, targets

    def random_patches() -> Iterator[tuple[dict, dict]]:
        while True:
            tile = loaded[int(rng.integers(len(loaded)))]
            height, width = tile.shape
            row = int(rng.integers(0, max(height - patch_size, 0) + 1))
            col = int(rng.integers(0, max(width - patch_size, 0) + 1))
            yield one(tile, row, col, random=True)

    def sequential_patches() -> Iterator[tuple[dict, dict]]:
        for tile in loaded:
            for row, col in _windows(tile, patch_size):
                yield one(tile, row, col, random=False)

    spec = tf.TensorSpec
    inputs_spec = {
        s: spec((patch_size, patch_size, SENSOR_CHANNELS[s]), tf.float32) for s in sensors
    }
    if location is not None:
        size = REGION_VECTOR_SIZE if location == "region" else COORDINATE_VECTOR_SIZE
        inputs_spec[LOCATION_INPUT] = spec((size,), tf.float32)
    target_spec = spec((patch_size, patch_size, NUM_CLASSES), tf.float32)
    targets_spec = {"output": target_spec}
    if deep_supervision:
        targets_spec["deepsupervision"] = target_spec
    generator = random_patches if mode == "random" else sequential_patches
    dataset = tf.data.Dataset.from_generator(
        generator, output_signature=(inputs_spec, targets_spec)
    )
    dataset = dataset.batch(batch_size, drop_remainder=mode == "random")
    if mode == "sequential":  # a known length lets Keras end validation without a warning
        batches = -(-count_patches(loaded, patch_size) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    if steps is not None:
        dataset = dataset.take(steps)
    return dataset.prefetch(2).with_options(_WITHOUT_AUTOTUNE)


def measure_throughput(dataset: tf.data.Dataset, batches: int = 20) -> dict[str, float]:
    """Time ``batches`` batches of a dataset; returns seconds and patches per second."""
    start = time.perf_counter()
    patches = 0
    for inputs, _ in dataset.take(batches):
        patches += int(next(iter(inputs.values())).shape[0])
    seconds = time.perf_counter() - start
    return {"batches": float(batches), "patches": float(patches), "seconds": seconds,
            "patches_per_second": patches / max(seconds, 1e-9)}
