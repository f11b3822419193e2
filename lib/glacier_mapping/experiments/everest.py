"""The Everest study: a model for a new sensor trained and tested on one real Landsat 7 scene.

The scene (``real_scenes/everest_landsat7``, Landsat 7 ETM+, 2000-10-30, 30 m, 655 x 800 px):
a small model (``experiments.everest_architecture``: DeepLabv3+ or GlaViTU) is trained on
one part of the scene against the RGI 6.0 mask and evaluated on a disjoint part, beside a
naive brightness threshold. The scene has red, green, blue and NIR as 8-bit DN, no SWIR and
no DEM, so:

- the model takes only the ``optical`` sensor, in the schema's six-band order
  (blue, green, red, nir, swir1, swir2): blue, green, red and NIR come from the files and
  are standardised with the mean and standard deviation of their DN on the training part
  (:func:`everest_norm_stats`); **SWIR1 and SWIR2 are filled with zeros** in training and
  prediction alike (the channels carry no information);
- BatchNormalization layers use the profile's ``training.batchnorm_momentum`` (0.9 in the
  CPU profiles): after the few hundred steps of a CPU profile Keras's 0.99 moving
  statistics still hold a sizeable share of their initial values (0.99^200 = 13 %), and the
  inference-mode GlaViTU then labelled almost every pixel glacier;
- the part split (:func:`split_parts`) leaves a gap of at least one patch between the
  training side and the held-out side; a validation strip for checkpoint selection is cut
  from the training side (adjacent to the training pixels, never to the held-out ones).

Stands in for: a user training a model for a new sensor on one scene. Breaks down: one
scene, one date and outlines up to ten years newer than the image (RGI BgnDate up to
2010), so the labels are partly wrong; the held-out part shares the scene's illumination and
season, which flatters every method equally (model and threshold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

from glacier_mapping.config import DEFAULT_LEARNING_RATE, Profile
from glacier_mapping.data.tiles import NormStats, Tile, make_tile
from glacier_mapping.evaluation import confusion_counts, metrics_from_counts
from glacier_mapping.experiments.strategies import ARCHITECTURES
from glacier_mapping.lazy import lazy_module
from glacier_mapping.metrics import count_rows
from glacier_mapping.registry import EverestScene
from glacier_mapping.store import Artifact, file_digest
from glacier_mapping.trained_models import TrainedModel, TrainingSetup, train_cached
from glacier_mapping.workflow import Context

inference = lazy_module("glacier_mapping.inference")
models = lazy_module("glacier_mapping.models")
patches = lazy_module("glacier_mapping.data.patches")
training = lazy_module("glacier_mapping.training")

#: Region label of the Everest experiment in the metrics files.
EVEREST_REGION = "HMA-Everest"


#: Largest 8-bit DN; optical features are DN / DN_MAX.
DN_MAX = 255.0


#: The README's naive baseline: glacier where the mean of red, green and blue DN exceeds this.
BRIGHTNESS_THRESHOLD = 200.0


#: Band order of the Everest optical array (the schema's); SWIR bands are zero-filled.
EVEREST_FILLED_BANDS: tuple[str, ...] = ("swir1", "swir2")


#: Bands of the Everest optical array that come from the files (the first four).
EVEREST_FILE_BANDS = 4


#: Patch size of the Everest model in every profile (the scene is only 800 px wide).
EVEREST_PATCH = 64


#: Splits: "<training side>-<held-out side>".
SPLITS: tuple[str, ...] = ("west-east", "east-west", "north-south", "south-north")


#: Rough illumination classes of :func:`illumination_classes`.
ILLUMINATION_CLASSES: tuple[str, ...] = ("bright", "dark, bluish", "dark, not bluish")


#: Parts of a split that are evaluated (held out, validation strip).
EVALUATED_PARTS: tuple[str, ...] = ("test", "val")


METRICS: tuple[str, ...] = ("iou", "precision", "recall")


@dataclass(frozen=True)
class EverestSettings:
    """Everything that determines the Everest model (its cache key with the files' checksums).

    Attributes:
        preset: Model size preset (``tiny`` in smoke, ``small`` otherwise).
        architecture: ``glavitu`` or ``deeplab`` (the profile's ``everest_architecture``).
        patch_size: Training patch size (pixels).
        batch_size: Patches per batch.
        epochs: Training epochs (the profile's ``experiments.scene_epochs``).
        steps_per_epoch: Batches per epoch (``everest_steps_per_epoch``, else the training
            value).
        learning_rate: Peak learning rate of one cosine cycle over all epochs.
        split: ``"<training side>-<held-out side>"``, one of :data:`SPLITS`.
        gap: Pixels left out between the training and held-out sides (>= patch_size).
        val_size: Pixels of the validation strip cut from the training side.
        batchnorm_momentum: Momentum of every BatchNormalization layer during training (the
            profile's ``training.batchnorm_momentum``); None keeps Keras's 0.99.
        seed: Training seed.
        run_eagerly: Train without graph tracing (the smoke profile's few steps).
    """

    preset: str
    architecture: str = "glavitu"
    patch_size: int = EVEREST_PATCH
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int = 40
    learning_rate: float = DEFAULT_LEARNING_RATE
    split: str = "west-east"
    gap: int = EVEREST_PATCH
    val_size: int = 2 * EVEREST_PATCH
    batchnorm_momentum: float | None = None
    seed: int = 0
    run_eagerly: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}: choose one of "
                             f"{list(ARCHITECTURES)} (experiments.everest_architecture).")
        if self.batchnorm_momentum is not None and not 0.0 < self.batchnorm_momentum < 1.0:
            raise ValueError(f"batchnorm_momentum={self.batchnorm_momentum} must be None or "
                             "lie in (0, 1).")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: choose one of {list(SPLITS)}.")
        if self.gap < self.patch_size:
            raise ValueError(f"gap={self.gap} must be at least one patch ({self.patch_size}).")
        if self.val_size < self.patch_size:
            raise ValueError(f"val_size={self.val_size} must be at least one patch.")


def everest_settings(profile: Profile, split: str = "west-east",
                     seed: int | None = None) -> EverestSettings:
    """The Everest settings of a profile.

    Preset ``tiny`` (smoke) or ``small``; from ``experiments``: ``scene_epochs`` and,
    when given, ``everest_architecture`` (default ``glavitu``), ``everest_steps_per_epoch``
    and ``everest_learning_rate`` (defaults: the profile's training values); from
    ``training``: ``batchnorm_momentum`` and ``run_eagerly``.
    """
    training, experiments = profile.training, profile.experiments
    return EverestSettings(
        preset="tiny" if profile.model.preset == "tiny" else "small",
        architecture=experiments.everest_architecture,
        batch_size=training.batch_size,
        epochs=experiments.scene_epochs,
        steps_per_epoch=experiments.everest_steps_per_epoch or training.steps_per_epoch,
        learning_rate=experiments.everest_learning_rate or training.learning_rate,
        split=split, seed=profile.seed if seed is None else seed,
        batchnorm_momentum=training.batchnorm_momentum,
        run_eagerly=training.run_eagerly,
    )


@dataclass
class EverestData:
    """The Everest scene in memory.

    Attributes:
        optical: ``(H, W, 6)`` float32 in the schema's band order, DN / 255 for blue, green,
            red and NIR, zeros for SWIR1 and SWIR2.
        rgb_dn: ``(H, W, 3)`` uint8 red, green, blue DN as in the file.
        glacier: ``(H, W)`` bool RGI 6.0 mask.
        transform: the grid's affine transform.
        crs: the grid's CRS.
    """

    optical: np.ndarray
    rgb_dn: np.ndarray
    glacier: np.ndarray
    transform: Any
    crs: Any

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width."""
        return self.glacier.shape


def load_everest(scene: EverestScene) -> EverestData:
    """Read the Everest RGB, NIR and mask files into an :class:`EverestData`.

    Raises:
        ValueError: if the three rasters are not on one grid.
    """
    with rasterio.open(scene.rgb) as rgb, rasterio.open(scene.nir) as nir, \
            rasterio.open(scene.mask) as mask:
        for other in (nir, mask):
            if other.shape != rgb.shape or not other.transform.almost_equals(rgb.transform):
                raise ValueError(f"{other.name} is not on the grid of {scene.rgb}.")
        rgb_dn = np.moveaxis(rgb.read(), 0, -1)
        nir_dn = nir.read(1)
        glacier = mask.read(1) > 0
        transform, crs = rgb.transform, rgb.crs
    red, green, blue = (rgb_dn[..., i].astype(np.float32) / DN_MAX for i in range(3))
    zeros = np.zeros_like(red)
    optical = np.stack([blue, green, red, nir_dn.astype(np.float32) / DN_MAX, zeros, zeros],
                       axis=-1)
    return EverestData(optical, rgb_dn, glacier, transform, crs)


Window = tuple[slice, slice]


def split_parts(shape: tuple[int, int], split: str, gap: int, val_size: int) -> dict[str, Window]:
    """Train, validation, gap and held-out windows of a two-sided split of a scene.

    The scene is cut across its width (``west-east``, ``east-west``) or height
    (``north-south``, ``south-north``): the training side and the held-out side each take
    half of what remains after the ``gap``. The validation strip is the first ``val_size``
    rows (northern edge; west/east splits) or columns (western edge; north/south splits) of
    the training side, so it never touches the held-out side.

    Returns:
        ``{"train", "val", "gap", "test"}`` -> ``(row slice, column slice)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {list(SPLITS)}.")
    height, width = shape
    across_width = split in ("west-east", "east-west")
    extent, other = (width, height) if across_width else (height, width)
    side = (extent - gap) // 2
    if side < 1 or val_size >= other:
        raise ValueError(f"A {height} x {width} scene is too small for gap={gap}, "
                         f"val_size={val_size}.")
    first, second = slice(0, side), slice(extent - side, extent)
    middle = slice(side, extent - side)
    train_side, test_side = (first, second) if split in ("west-east", "north-south") \
        else (second, first)
    val, fit = slice(0, val_size), slice(val_size, other)
    everything = slice(0, other)
    if across_width:
        return {"train": (fit, train_side), "val": (val, train_side),
                "gap": (everything, middle), "test": (everything, test_side)}
    return {"train": (train_side, fit), "val": (train_side, val),
            "gap": (middle, everything), "test": (test_side, everything)}


def window_bounds_km(window: Window, shape: tuple[int, int], pixel_size_km: float
                     ) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a window in the km axes of :mod:`glacier_mapping.plots`."""
    rows, cols = window
    height = shape[0]
    return (cols.start * pixel_size_km, (height - rows.stop) * pixel_size_km,
            cols.stop * pixel_size_km, (height - rows.start) * pixel_size_km)


def parts_table(data: EverestData, parts: Mapping[str, Window]) -> pd.DataFrame:
    """Rows, columns and RGI glacier share of each part of a split."""
    return pd.DataFrame({
        name: {"rows": f"{rows.start}-{rows.stop}", "columns": f"{cols.start}-{cols.stop}",
               "glacier share": round(float(data.glacier[rows, cols].mean()), 3)}
        for name, (rows, cols) in parts.items()
    }).T


def split_boxes(parts: Mapping[str, Window], shape: tuple[int, int], pixel_size_km: float
                ) -> list[tuple[float, float, float, float, str]]:
    """``(x0, y0, x1, y1, part)`` rectangles of a split for ``hv.Rectangles``."""
    return [(*window_bounds_km(window, shape, pixel_size_km), name)
            for name, window in parts.items()]


def everest_tile(data: EverestData, stats: NormStats, window: Window, name: str,
                 patch_size: int) -> Tile:
    """A schema tile (region ``HMA``) of one window: model features and the RGI labels."""
    rows, cols = window
    window_transform = data.transform @ Affine.translation(cols.start, rows.start)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    left, top = window_transform.c, window_transform.f
    right = left + width * window_transform.a
    bottom = top + height * window_transform.e
    west, south, east, north = transform_bounds(data.crs, "EPSG:4326", left, bottom, right, top)
    return make_tile(name, "HMA", {"optical": model_features(data, stats, window)},
                     data.glacier[window].astype(np.uint8), (west, east, south, north),
                     patch_size)


def optical_dn(data: EverestData) -> np.ndarray:
    """The ``(H, W, 6)`` optical array in the files' DN (SWIR1 and SWIR2 stay 0)."""
    return np.rint(data.optical * np.float32(DN_MAX))


def everest_norm_stats(data: EverestData, window: Window) -> NormStats:
    """Per-band standardisation with the DN mean and standard deviation of ``window``.

    Written as min-max statistics (``min`` = mean, ``max`` = mean + std), so
    :meth:`NormStats.normalise` gives ``(DN - mean) / std`` and the model card's statistics
    apply to the files' DN as they are; ``clip=False`` keeps ``deploy`` and
    :func:`glacier_mapping.map_glaciers` from clipping these unbounded values to [0, 1] (as
    training never did). The zero-filled SWIR1 and SWIR2 keep min 0, max 1.

    Raises:
        ValueError: if a band is constant over the window.
    """
    values = optical_dn(data)[window][..., :EVEREST_FILE_BANDS].reshape(-1, EVEREST_FILE_BANDS)
    mean = values.mean(axis=0, dtype=np.float64)
    std = values.std(axis=0, dtype=np.float64)
    if not (std > 0).all():
        raise ValueError(f"A band is constant over the training window {_window_text(window)}; "
                         "it cannot be standardised.")
    filled = len(EVEREST_FILLED_BANDS)
    return NormStats({"optical": [round(v, 4) for v in mean] + [0.0] * filled},
                     {"optical": [round(v, 4) for v in mean + std] + [1.0] * filled},
                     source="Everest Landsat 7 DN standardised with the training part's mean "
                            "and std (min = mean, max = mean + std); SWIR1/SWIR2 zero-filled",
                     clip=False)


def model_features(data: EverestData, stats: NormStats, window: Window) -> np.ndarray:
    """The model's ``(h, w, 6)`` optical input of one window (normalised DN)."""
    return stats.normalise("optical", optical_dn(data)[window])


def scene_checksums(scene: EverestScene) -> dict[str, str]:
    """sha256 of the files the experiment reads (they key its cached artifacts)."""
    return {role: file_digest(getattr(scene, role)) for role in ("rgb", "nir", "mask")}


#: A trained Everest model.
EverestModel = TrainedModel[EverestSettings]


def train_everest(context: Context, scene: EverestScene, settings: EverestSettings,
                  verbose: bool = True) -> EverestModel:
    """Train the Everest model once (cached on the files' checksums and the settings).

    The model and its card are also copied to ``outputs/<profile>/models/everest-<arch>``.
    """
    checksums = scene_checksums(scene)
    name = f"everest-{settings.architecture}"

    def setup() -> TrainingSetup:
        data = load_everest(scene)
        parts = split_parts(data.shape, settings.split, settings.gap, settings.val_size)
        stats = everest_norm_stats(data, parts["train"])
        size = settings.patch_size
        train = [everest_tile(data, stats, parts["train"], "EVEREST-0-0", size)]
        val = [everest_tile(data, stats, parts["val"], "EVEREST-1-0", size)]
        if verbose:
            print(f"Training {name} ({settings.architecture}/{settings.preset}, optical "
                  f"without SWIR, {settings.epochs} epochs of {settings.steps_per_epoch} steps)")
        models.set_seed(settings.seed)  # initial weights: the seed, not history
        model = models.build_model(settings.architecture, ("optical",), size, settings.preset)
        common = dict(sensors=("optical",), patch_size=size, batch_size=settings.batch_size,
                      seed=settings.seed, deep_supervision=settings.architecture == "glavitu")
        train_ds = patches.make_patch_dataset(train, mode="random", augment=True, **common)
        val_ds = patches.make_patch_dataset(val, mode="sequential", augment=False,
                                            label_smoothing=0.0, **common)
        config = training.TrainConfig(
            epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch,
            learning_rate=settings.learning_rate, restart_epochs=(settings.epochs,),
            seed=settings.seed, batchnorm_momentum=settings.batchnorm_momentum,
            run_eagerly=settings.run_eagerly)
        card = {
            "name": name, "architecture": settings.architecture, "preset": settings.preset,
            "strategy": "single scene", "sensors": ("optical",), "patch_size": size,
            "training_data": {"scene": "everest_landsat7", "sha256": checksums,
                              "split": settings.split,
                              "train_window": _window_text(parts["train"]),
                              "val_window": _window_text(parts["val"]),
                              "held_out_window": _window_text(parts["test"])},
            "bands": {"blue": "RGB band 3", "green": "RGB band 2", "red": "RGB band 1",
                      "nir": "B4", "swir1": "zero-filled", "swir2": "zero-filled"},
        }
        return TrainingSetup(model, train_ds, val_ds, config, stats, card)

    # version 4: norm_stats.json records clip=False (deployments clipped the values before)
    params = {**dataclasses.asdict(settings), "files": checksums, "version": 4}
    artifact, card = train_cached(context, "everest-model", params, setup, verbose=verbose)
    return TrainedModel(settings, artifact, card)


def _window_text(window: Window) -> str:
    rows, cols = window
    return f"rows {rows.start}-{rows.stop}, columns {cols.start}-{cols.stop}"


def predict_everest(context: Context, trained: EverestModel, scene: EverestScene,
                    part: str = "test") -> Artifact:
    """Glacier probabilities of one part of the split (cached ``probs.npy``, float16).

    Only that window's pixels are given to the model, normalised with the card's statistics.

    Args:
        context: The chapter's context (its store caches the result).
        trained: The model of :func:`train_everest`.
        scene: The scene files.
        part: ``"test"`` (held out) or ``"val"`` (the validation strip).
    """
    if part not in EVALUATED_PARTS:
        raise ValueError(f"part={part!r}: choose one of {list(EVALUATED_PARTS)}.")
    settings = trained.spec

    def build(directory: Path) -> dict[str, Any]:
        data = load_everest(scene)
        window = split_parts(data.shape, settings.split, settings.gap, settings.val_size)[part]
        features = model_features(data, trained.norm_stats(), window)
        probs = inference.predict_array(trained.load(), {"optical": features},
                                        settings.patch_size)
        np.save(directory / "probs.npy", probs[..., 1].astype(np.float16))
        return {"pixels": int(probs.shape[0] * probs.shape[1])}

    return context.store.get_or_create("everest-predictions", {"part": part}, build,
                                       inputs=[trained.artifact])


def threshold_baseline(rgb_dn: np.ndarray, threshold: float = BRIGHTNESS_THRESHOLD
                       ) -> np.ndarray:
    """Glacier where the mean of the red, green and blue DN exceeds ``threshold``."""
    return np.asarray(rgb_dn, dtype=np.float32).mean(axis=-1) > threshold


@dataclass
class EverestResult:
    """Predictions of the model and the threshold on one part, with their confusion counts.

    Attributes:
        part: ``"test"`` (held out) or ``"val"``.
        model_name: Name of the model's row (its architecture).
        window: The part's window.
        glacier: RGI mask of the part.
        model: The model's glacier map (probability >= 0.5).
        threshold: The brightness threshold's glacier map.
        counts: method -> confusion counts.
    """

    part: str
    model_name: str
    window: Window
    glacier: np.ndarray
    model: np.ndarray
    threshold: np.ndarray
    counts: dict[str, dict[str, int]]

    def table(self) -> pd.DataFrame:
        """IoU, precision and recall of each method (rows) on the part."""
        return pd.DataFrame({name: metrics_from_counts(counts)
                             for name, counts in self.counts.items()}).T[list(METRICS)]

    def gain(self) -> float:
        """The model's IoU minus the threshold's."""
        table = self.table()
        return float(table.loc[self.model_name, "iou"] - table.loc["threshold", "iou"])

    def tidy(self, **columns: Any) -> pd.DataFrame:  # noqa: ANN401
        """Metrics rows (:mod:`glacier_mapping.metrics`) of every method."""
        frames = [count_rows(counts, METRICS, model=name, **columns)
                  for name, counts in self.counts.items()]
        return pd.concat(frames, ignore_index=True)


def evaluate_everest(data: EverestData, settings: EverestSettings, probs: np.ndarray,
                     model_name: str | None = None, part: str = "test") -> EverestResult:
    """Compare the model's probabilities (>= 0.5) and the threshold on one part.

    Args:
        data: The scene.
        settings: The model's settings (they define the split).
        probs: Glacier probabilities of the part (:func:`predict_everest`).
        model_name: Row name of the model; default its architecture.
        part: ``"test"`` (held out) or ``"val"``.
    """
    if part not in EVALUATED_PARTS:
        raise ValueError(f"part={part!r}: choose one of {list(EVALUATED_PARTS)}.")
    window = split_parts(data.shape, settings.split, settings.gap, settings.val_size)[part]
    glacier = data.glacier[window]
    predicted = np.asarray(probs, dtype=np.float32) >= 0.5
    if predicted.shape != glacier.shape:
        raise ValueError(f"probs {predicted.shape} do not cover the {part} part "
                         f"{glacier.shape}.")
    baseline = threshold_baseline(data.rgb_dn[window])
    name = model_name or settings.architecture
    counts = {name: confusion_counts(predicted.astype(np.int64), glacier.astype(np.int64)),
              "threshold": confusion_counts(baseline.astype(np.int64),
                                            glacier.astype(np.int64))}
    return EverestResult(part, name, window, glacier, predicted, baseline, counts)


def everest_comparison(result: EverestResult) -> str:
    """One sentence: the model's and the threshold's IoU on the part and their difference.

    Whether the difference supports a finding is judged in chapter 08's findings (with a
    bootstrap interval), not here.
    """
    table = result.table()
    model = float(table.loc[result.model_name, "iou"])
    baseline = float(table.loc["threshold", "iou"])
    gain = result.gain()
    where = "held-out part" if result.part == "test" else "validation strip"
    return (f"On the {where} the model reaches IoU {model:.3f} against {baseline:.3f} for the "
            f"brightness threshold, a difference of {gain:+.3f}.")


def illumination_classes(rgb_dn: np.ndarray) -> np.ndarray:
    """Index into :data:`ILLUMINATION_CLASSES` per pixel, from the red, green, blue DN.

    ``bright``: the threshold's glacier (mean DN > 200); ``dark, bluish``: otherwise with
    blue DN above red DN (the blue cast of skylit shadow); ``dark, not bluish``: the rest
    (debris, rock, vegetation). A rough description of the pixels, not a shadow model.
    """
    rgb = np.asarray(rgb_dn, dtype=np.float32)
    bluish = rgb[..., 2] > rgb[..., 0]
    return np.where(threshold_baseline(rgb), 0, np.where(bluish, 1, 2))


def errors_by_illumination(data: EverestData, result: EverestResult) -> pd.DataFrame:
    """Where the pixels are and how the model does in each :data:`ILLUMINATION_CLASSES`.

    Columns: share of the part's RGI glacier pixels and of its other pixels in the class,
    the model's recall on the glacier pixels and its false-positive rate (share labelled
    glacier) on the others. The threshold has recall and false-positive rate 1 in ``bright``
    and 0 elsewhere by construction.
    """
    classes = illumination_classes(data.rgb_dn[result.window])
    glacier, model = result.glacier, result.model
    rows = {}
    for index, name in enumerate(ILLUMINATION_CLASSES):
        inside = classes == index
        on, off = inside & glacier, inside & ~glacier
        rows[name] = {
            "share of glacier": on.sum() / max(glacier.sum(), 1),
            "share of non-glacier": off.sum() / max((~glacier).sum(), 1),
            "model recall": model[on].mean() if on.any() else np.nan,
            "model false-positive rate": model[off].mean() if off.any() else np.nan,
        }
    return pd.DataFrame(rows).T.astype(float)

