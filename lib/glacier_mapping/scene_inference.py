"""The window loop of scene inference, shared by ``deploy`` and :func:`map_glaciers`.

A scene (:class:`glacier_mapping.data.scenes.SceneSource` or an xarray Dataset behind
:class:`glacier_mapping.data.dataset_source.DatasetSource`) is read one batch of windows at a
time (a background thread reads the next batch while the model runs), predicted, and blended by
:class:`glacier_mapping.inference.WindowBlender`, which holds one patch of rows. Rows that no
later window touches are classified, given their (calibrated) confidence and, with MC dropout,
the spread of the glacier probability, and handed to the caller (:func:`mapped_rows`), which
writes them to files or arrays. Peak memory therefore depends on the patch size, the batch size
and the scene width, never on the scene height.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from glacier_mapping.calibration import Calibrator, confidence
from glacier_mapping.data.scenes import SceneSource
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.iou_estimation import estimate_iou, expected_counts, pool_counts
from glacier_mapping.lazy import lazy_module
from glacier_mapping.runtime import Runner
from glacier_mapping.windows import WindowBlender

# TensorFlow-backed: loaded only for models that take window-centre coordinates
patches = lazy_module("glacier_mapping.data.patches")

#: Class raster value of pixels without valid input.
CLASS_NODATA = 255


@dataclass(frozen=True)
class WindowPlan:
    """How the model runs over a scene's windows.

    Attributes:
        patch_size: window side in pixels.
        stride: window step in pixels.
        batch_size: windows per model call.
        blend: window weights (:data:`glacier_mapping.inference.BLENDS`).
        tta: 8-fold dihedral test-time augmentation.
        mc_passes: MC-dropout passes to average (0 = deterministic).
        prefetch: read the next batch of windows while the model runs.
        spread: also blend the standard deviation of the glacier probability over the
            MC-dropout passes (needs ``mc_passes >= 2``).
    """

    patch_size: int
    stride: int
    batch_size: int
    blend: str
    tta: bool
    mc_passes: int
    prefetch: bool = True
    spread: bool = False

    def __post_init__(self) -> None:
        if self.spread and self.mc_passes < 2:
            raise ValueError(f"The MC-dropout spread needs mc_passes >= 2, got "
                             f"{self.mc_passes}; pass mc_passes=2 or more.")


@dataclass(frozen=True)
class WindowReader:
    """Reads one batch of windows (features, validity and location) of a window row.

    Attributes:
        source: the scene.
        sensors: the model's sensors.
        stats: normalisation statistics.
        size: window side in pixels.
        mode: location input: ``"region"``, ``"coordinates"`` or None.
        region_vector: the region vector of mode ``"region"``.
    """

    source: SceneSource
    sensors: tuple[str, ...]
    stats: NormStats
    size: int
    mode: str | None
    region_vector: np.ndarray | None

    def __call__(self, job: tuple[int, list[int]]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                          np.ndarray | None]:
        """Windows ``(B, P, P, C)`` per sensor, validity ``(P, right - left)``, location."""
        row, batch = job
        size, left, right = self.size, batch[0], batch[-1] + self.size
        features, valid = self.source.read_window(row, left, size, right - left, self.sensors,
                                                  self.stats)
        windows = {name: np.stack([array[:, c - left : c - left + size] for c in batch])
                   for name, array in features.items()}
        location = None
        if self.mode == "region":
            location = self.region_vector
        elif self.mode == "coordinates":
            centres = [self.source.center_lonlat(row, col, size, size) for col in batch]
            location = np.stack([patches.coordinate_vector(lat=lat, lon=lon)
                                 for lon, lat in centres])
        return windows, valid, location


class MappedRows(NamedTuple):
    """Finished rows ``[top, top + len(classes))`` of a mapped scene.

    Attributes:
        top: first row on the scene grid.
        classes: uint8 class (1 = glacier), :data:`CLASS_NODATA` where not valid.
        confidence: float32 (calibrated) confidence, NaN where not valid.
        spread: float32 MC-dropout standard deviation of the glacier probability, NaN where
            not valid; None unless the plan asks for it.
        valid: where every input has data.
    """

    top: int
    classes: np.ndarray
    confidence: np.ndarray
    spread: np.ndarray | None
    valid: np.ndarray


@dataclass
class SceneTotals:
    """Running totals of a mapped scene: pixels, glacier area, confidence, expected counts."""

    windows: int
    valid: int = 0
    glacier: int = 0
    area_km2: float = 0.0
    confidence_sum: float = 0.0
    predict_seconds: float = 0.0
    counts: list[dict[str, float]] = field(default_factory=list)

    def add(self, rows: MappedRows, pixel_area_km2: np.ndarray) -> None:
        """Add finished rows; ``pixel_area_km2`` is the area of one pixel of each row."""
        valid = rows.valid
        glacier = (rows.classes == 1) & valid
        self.counts.append(expected_counts(glacier, np.where(valid, rows.confidence, 0.0),
                                           valid))
        self.valid += int(valid.sum())
        self.glacier += int(glacier.sum())
        self.area_km2 += float((glacier.sum(axis=1) * pixel_area_km2).sum())
        self.confidence_sum += float(rows.confidence[valid].sum())

    @property
    def mean_confidence(self) -> float | None:
        """Mean confidence over valid pixels (None without any)."""
        return self.confidence_sum / self.valid if self.valid else None

    def estimated_iou(self, calibrator: Calibrator | None) -> float | None:
        """The scene's estimated glacier IoU; None without a calibrator or when undefined."""
        if calibrator is None:
            return None
        estimated = estimate_iou(pool_counts(self.counts))
        return None if math.isnan(estimated) else estimated


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_ahead(jobs: Sequence[Any], read: Callable[[Any], Any],
               prefetch: bool) -> Iterator[tuple[Any, Any]]:
    """Yield ``(job, read(job))`` in order; with ``prefetch`` the next read runs meanwhile.

    One background thread does every read, in job order, so a file handle is never used by
    two threads at once; at most one read result waits in memory.
    """
    if not prefetch:
        for job in jobs:
            yield job, read(job)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deploy-read") as pool:
        pending = pool.submit(read, jobs[0]) if jobs else None
        for index, job in enumerate(jobs):
            result = pending.result()
            if index + 1 < len(jobs):
                pending = pool.submit(read, jobs[index + 1])
            yield job, result


def pixel_area_km2(source: SceneSource, rows: np.ndarray) -> np.ndarray:
    """Area of one pixel of each of the grid's ``rows`` (km²; ellipsoidal for geographic)."""
    dx, dy = source.grid.pixel_size_m(rows.astype(np.float64))
    return dx * dy / 1e6


def mapped_rows(source: SceneSource, runner: Runner, reader: WindowReader,
                plan: WindowPlan, calibrator: Calibrator | None, totals: SceneTotals,
                progress: bool = False) -> Iterator[MappedRows]:
    """Map the scene window row by window row, yielding rows as soon as they are final.

    Args:
        source: the scene.
        runner: the backend that runs the model (:func:`glacier_mapping.runtime.load_backend`).
        reader: reads the windows of ``source`` for the model.
        plan: window size, step, batch, blending, TTA and MC dropout.
        calibrator: turns probabilities into calibrated confidence; None gives
            uncalibrated confidence (1 - normalised entropy).
        totals: updated with every yielded row, and with the time spent predicting
            (``predict_seconds``, excluding the caller's time between rows).
        progress: show a progress bar.
    """
    height, width = source.shape
    size = plan.patch_size
    blender = WindowBlender(height, width, size, plan.stride, plan.blend)
    rows = sorted({row for row, _ in blender.origins})
    columns = sorted({col for _, col in blender.origins})
    jobs = [(row, batch) for row in rows for batch in _batches(columns, plan.batch_size)]
    with tqdm(total=len(blender.origins), disable=not progress, unit="window",
              desc=f"map {source.name}") as bar:
        tick = time.perf_counter()
        for (row, batch), (windows, valid, location) in read_ahead(jobs, reader, plan.prefetch):
            probs = _predict(runner, windows, plan, location)
            for window_probs, col in zip(probs, batch, strict=True):
                # only the last window of a row of windows finishes rows
                finished = blender.add(window_probs, row, col,
                                       valid[:, col - batch[0] : col - batch[0] + size])
            bar.update(len(batch))
            if finished is None:
                continue
            result = _finish(finished, calibrator, plan.spread)
            totals.add(result, pixel_area_km2(source, np.arange(result.top, result.top
                                                                + len(result.valid))))
            totals.predict_seconds += time.perf_counter() - tick
            yield result
            tick = time.perf_counter()


def _predict(runner: Runner, windows: dict[str, np.ndarray], plan: WindowPlan,
             location: np.ndarray | None) -> np.ndarray:
    """Probabilities ``(B, P, P, classes)``, with the spread as one more channel if asked."""
    if not plan.spread:
        return runner.predict(windows, location=location, tta=plan.tta,
                              mc_passes=plan.mc_passes)
    probs, spread = runner.predict_spread(windows, plan.mc_passes, location=location,
                                          tta=plan.tta)
    # blended like the probabilities: a weighted mean of the windows' spreads
    return np.concatenate([probs, spread[..., None]], axis=-1)


def _finish(finished: Any, calibrator: Calibrator | None,  # noqa: ANN401 - BlendedRows
            spread: bool) -> MappedRows:
    """Classes, confidence and spread of blended rows."""
    top, blended, valid = finished
    probs = blended[..., :-1] if spread else blended
    classes = np.argmax(probs, axis=-1).astype(np.uint8)
    conf = (confidence(probs) if calibrator is None
            else calibrator.calibrated_confidence(probs)).astype(np.float32)
    return MappedRows(
        top,
        np.where(valid, classes, CLASS_NODATA).astype(np.uint8),
        np.where(valid, conf, np.nan).astype(np.float32),
        np.where(valid, blended[..., -1], np.nan).astype(np.float32) if spread else None,
        valid,
    )
