"""Glacier area intervals from calibrated probabilities, with spatially correlated errors.

A calibrated glacier probability ``p`` says how often a pixel like this one is glacier. The
expected glacier area of a region is ``sum(p * pixel area)``; the true area scatters around it
by the misclassified pixels, and these come in patches (a debris tongue, a shadowed cirque, an
outline displaced along a whole edge), not one by one. Treating pixels as independent would
make the interval of a large glacier absurdly narrow.

The correlated-error model (:func:`bootstrap_areas`): the scene is cut into square blocks of
``block_px`` pixels, the block grid shifted at random in each draw. Each block draws one
uniform number ``u`` and all its pixels with ``p > u`` are glacier in that draw: inside a block
the true outline is a contour of the probability field at a random level, and different
blocks are independent. Every pixel is still glacier with probability ``p``, so the draws
average to the expected area. The 5-95 % quantiles of the drawn areas (per glacier zone and
for the scene) form 90 % intervals. Draws are seeded and deterministic.

The block size (:func:`choose_block_size`) comes from data: the correlogram of the residual
``label - p`` on labelled data (validation tiles of the same model and calibrator). Its 1/e
range is the correlation length ``L``. The variance of a large sum depends on the correlogram
summed over all lags, not on ``L`` alone, so the block side is the one whose model draws, on
the labelled data's own probabilities, carry the same summed correlogram as the residuals
(lags within ``min(5 L, first lag at which it is <= 0)``). Where ``p`` is uniform inside a
block that side is the square root of the sum: about 2.5 L for an exponential correlation,
1.8 L for a Gaussian one; blocks that cross outlines need larger sides.

A calibrator fitted on validation tiles is not equally right on every acquisition: on the
synthetic benchmark the logit shift that would recalibrate one region's or one acquisition's
pixels ranges from about -1 to +0.7. That error is shared by every pixel of the acquisition,
so no block size captures it. An :class:`AcquisitionShift` is the distribution of that shift,
measured on labelled acquisitions the calibrator was not fitted on (:func:`fit_logit_shift`
per acquisition); with it, each draw first draws one shift for the scene from its predictive
(Student-t) distribution and moves every uncertain pixel's probability by it in logit space,
then draws the blocks. The expected area is then the mean over the shifted probabilities.

Stands in for: the area that a perfect reference would measure in the same zones, repeated
over the errors the calibrated model makes. Breaks down where (1) the calibration does not
hold (a region or season unlike the validation data: intervals are then centred wrongly, no
block size repairs that); (2) errors are correlated farther than the validation tiles reach
or differently from place to place (one block size for the scene; square, isotropic blocks);
(3) a whole glacier is systematically mislabelled (an error the size of the glacier is one
block: the interval holds only if such errors are as frequent as in the validation data); and
it leaves out the registration of the scene, the date of the outlines and errors of the
reference labels the calibrator was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special, stats

#: Two-sided coverage of the intervals (5-95 %).
LEVEL = 0.9
#: Draws of the correlated-error model.
SAMPLES = 1000
#: Model draws per labelled tile when matching the block size.
MODEL_DRAWS = 4
#: Key of the block-size record in a calibrator's JSON (:meth:`BlockSize.to_json`).
AREA_ERRORS_KEY = "area_errors"
#: Lags summed for the block size, in correlation lengths: an exponential correlation keeps
#: 4 % of its integral beyond 5 L; further lags add mostly noise.
LAG_LIMIT = 5.0


@dataclass(frozen=True)
class BlockSize:
    """Block size chosen from a correlogram.

    Attributes:
        correlation_length_px: lag (pixels) at which the correlation falls below 1/e.
        block_px: side of the bootstrap blocks (pixels) whose draws carry the data's summed
            correlogram (:func:`choose_block_size`).
        radius_px: lags up to this distance (pixels) entered the sum.
    """

    correlation_length_px: float
    block_px: int
    radius_px: int

    def to_json(self) -> dict[str, Any]:
        """The record stored with a calibrator under :data:`AREA_ERRORS_KEY`."""
        return {"block_px": self.block_px,
                "correlation_length_px": round(self.correlation_length_px, 3),
                "radius_px": self.radius_px}


@dataclass(frozen=True)
class AcquisitionShift:
    """Spread of the calibration's logit shift from one acquisition to the next.

    Attributes:
        mean_logit: mean of the acquisitions' fitted shifts.
        sd_logit: their standard deviation (ddof 1).
        acquisitions: how many labelled acquisitions they come from (at least 2).
    """

    mean_logit: float
    sd_logit: float
    acquisitions: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_logit) and math.isfinite(self.sd_logit)
                and self.sd_logit >= 0 and self.acquisitions >= 2):
            raise ValueError(f"an acquisition shift needs a finite mean, sd >= 0 and at least "
                             f"two acquisitions; got {self}.")

    @classmethod
    def from_shifts(cls, shifts: np.ndarray) -> AcquisitionShift:
        """The spread of per-acquisition shifts (:func:`fit_logit_shift`)."""
        values = np.asarray(shifts, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size < 2:
            raise ValueError(f"{values.size} acquisition shift(s): the spread needs at least 2.")
        return cls(float(values.mean()), float(values.std(ddof=1)), int(values.size))

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Shifts of new acquisitions: Student-t predictive, ``sd sqrt(1 + 1/n)`` scale."""
        scale = self.sd_logit * math.sqrt(1.0 + 1.0 / self.acquisitions)
        return self.mean_logit + scale * rng.standard_t(self.acquisitions - 1, size)

    def range(self, level: float = LEVEL) -> tuple[float, float]:
        """The central ``level`` range of the shifts :meth:`draw` draws from."""
        scale = self.sd_logit * math.sqrt(1.0 + 1.0 / self.acquisitions)
        half = float(stats.t.ppf(0.5 + level / 2.0, self.acquisitions - 1)) * scale
        return self.mean_logit - half, self.mean_logit + half

    def to_json(self) -> dict[str, Any]:
        """The record stored with a calibrator under ``area_errors.logit_shift``."""
        return {"mean_logit": round(self.mean_logit, 4), "sd_logit": round(self.sd_logit, 4),
                "acquisitions": self.acquisitions}


def fit_logit_shift(probability: np.ndarray, label: np.ndarray) -> float:
    """The shift ``d`` that makes ``expit(logit(p) + d)`` fit the labels best (likelihood).

    Pixels with ``p`` of exactly 0 or 1 are left out (the shift cannot move them, and the
    area model draws them as certain); NaN probabilities too.
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=np.float64).ravel()
    keep = np.isfinite(p) & (p > 0) & (p < 1)
    if not keep.any():
        return float("nan")
    z, y = special.logit(p[keep]), y[keep]

    def loss(shift: float) -> float:
        return float(np.mean(np.logaddexp(0.0, z + shift) - y * (z + shift)))

    return float(optimize.minimize_scalar(loss, bounds=(-8.0, 8.0), method="bounded").x)


def calibrator_shift(data: dict[str, Any]) -> AcquisitionShift | None:
    """The acquisition shift stored in a calibrator's JSON, or None if absent.

    Raises:
        ValueError: if the record is there but malformed (names the field).
    """
    record = (data.get(AREA_ERRORS_KEY) or {}).get("logit_shift")
    if record is None:
        return None
    try:
        return AcquisitionShift(float(record["mean_logit"]), float(record["sd_logit"]),
                                int(record["acquisitions"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"field '{AREA_ERRORS_KEY}.logit_shift' must hold mean_logit, "
                         f"sd_logit (>= 0) and acquisitions (>= 2); got {record!r} "
                         f"({error}).") from None


def calibrator_block_size(data: dict[str, Any]) -> BlockSize | None:
    """The block size stored in a calibrator's JSON (``area_errors``), or None if absent.

    Raises:
        ValueError: if the record is there but malformed (names the field).
    """
    record = data.get(AREA_ERRORS_KEY)
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ValueError(f"field {AREA_ERRORS_KEY!r} must be an object; got {record!r}.")
    values = {}
    for name, kind, low in (("block_px", int, 1), ("radius_px", int, 0),
                            ("correlation_length_px", float, 0)):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= low) or (kind is int and value != int(value)):
            raise ValueError(f"field '{AREA_ERRORS_KEY}.{name}' must be a finite number >= "
                             f"{low}{' (an integer)' if kind is int else ''}; got {value!r}.")
        values[name] = kind(value)
    return BlockSize(**values)


def _stack(field: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(field, dtype=np.float64)
    values = values[None] if values.ndim == 2 else values
    if values.ndim != 3:
        raise ValueError(f"field must be (H, W) or (tiles, H, W); got shape {values.shape}.")
    mask = np.isfinite(values) if valid is None else (
        np.broadcast_to(np.asarray(valid, dtype=bool), values.shape) & np.isfinite(values))
    return np.where(mask, values, 0.0), mask.astype(np.float64)


def correlogram(field: np.ndarray, valid: np.ndarray | None = None,
                max_lag: int | None = None) -> np.ndarray:
    """Autocorrelation of a zero-mean field at every 2-D lag up to ``max_lag`` pixels.

    ``rho(h) = (sum f_i f_(i+h) / pairs(h)) / (sum f_i^2 / pixels)`` over the valid pixel
    pairs, summed over tiles when ``field`` is ``(tiles, H, W)``. The field is not
    centred: residuals ``label - p`` of calibrated probabilities have zero mean by construction
    (subtract the mean of another field first).

    Returns:
        ``(2 max_lag + 1, 2 max_lag + 1)`` array, lag ``(0, 0)`` at the centre; NaN where no
        pair exists. ``max_lag`` defaults to half the smaller tile side.
    """
    values, mask = _stack(field, valid)
    height, width = values.shape[1:]
    lag = min(height, width) // 2 if max_lag is None else int(max_lag)
    shape = (2 * height, 2 * width)
    products = np.fft.irfft2(np.abs(np.fft.rfft2(values, s=shape)) ** 2, s=shape).sum(axis=0)
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(mask, s=shape)) ** 2, s=shape).sum(axis=0)
    keep = np.r_[np.arange(-lag, 0), np.arange(lag + 1)]
    products = products[np.ix_(keep, keep)]
    pairs = np.round(pairs[np.ix_(keep, keep)])
    if pairs[lag, lag] == 0 or products[lag, lag] <= 0:
        raise ValueError("The field has no valid non-zero value; a correlogram needs some.")
    with np.errstate(invalid="ignore", divide="ignore"):
        covariance = np.where(pairs > 0, products / pairs, np.nan)
    return covariance / covariance[lag, lag]


def _radial(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean correlation per whole-pixel distance, and each lag's distance bin."""
    lag = rho.shape[0] // 2
    dy, dx = np.mgrid[-lag:lag + 1, -lag:lag + 1]
    distance = np.rint(np.hypot(dy, dx)).astype(int)
    inside = (distance <= lag) & np.isfinite(rho)
    sums = np.bincount(distance[inside], weights=rho[inside], minlength=lag + 1)
    counts = np.bincount(distance[inside], minlength=lag + 1)
    with np.errstate(invalid="ignore"):
        return sums / counts, distance


def _levels(rows: np.ndarray, cols: np.ndarray, block: int, shape: tuple[int, int],
            rng: np.random.Generator) -> np.ndarray:
    """One draw of the model: each pixel's level, shared by its block of a shifted grid."""
    shift_y, shift_x = rng.integers(0, block, size=2)
    blocks_x = shape[1] // block + 2
    level = rng.random((shape[0] // block + 2) * blocks_x)
    return level[((rows + shift_y) // block) * blocks_x + (cols + shift_x) // block]


def _model_integral(probability: np.ndarray, block: int, radius: int, draws: int,
                    rng: np.random.Generator) -> float:
    """Summed correlogram of the model's residuals ``T - p`` on ``probability`` tiles."""
    tiles = probability[None] if probability.ndim == 2 else probability
    rows, cols = np.indices(tiles.shape[1:])
    residuals = np.stack([
        (_levels(rows, cols, block, tile.shape, rng) < tile) - tile
        for tile in tiles for _ in range(draws)
    ])
    reach = max(radius, math.ceil(block * math.sqrt(2.0)))
    rho = correlogram(residuals, max_lag=min(reach, min(tiles.shape[1:]) // 2))
    return float(np.nansum(rho[_radial(rho)[1] <= reach]))


def choose_block_size(residual: np.ndarray, probability: np.ndarray | None = None,
                      valid: np.ndarray | None = None, max_lag: int | None = None,
                      seed: int = 0) -> BlockSize:
    """Block size from the correlogram of residuals ``label - p`` on labelled data.

    The correlation length is the lag at which the correlogram falls below 1/e. The block side
    makes the model's residuals carry the data's summed correlogram (lags up to
    ``min(5 L, first lag <= 0)``): without ``probability`` it is the square root of that sum,
    exact where ``p`` is uniform within a block; with the labelled data's probabilities it is
    the smallest side whose model draws on those probabilities (four per tile) sum at least
    as high. The second is the one to use: inside a block that crosses an outline the model's
    pixels with different ``p`` are less than fully correlated, so the square-root side
    falls short (on the synthetic scenes of the tests by a factor 0.6 in the sum).

    Args:
        residual: ``(H, W)`` or ``(tiles, H, W)``; NaN or ``valid == False`` where unknown.
        probability: the calibrated probabilities behind ``residual``, same shape.
        valid: optional mask of the pixels to use (same shape, or one ``(H, W)`` for all).
        max_lag: largest lag examined (pixels); default half the smaller tile side.
        seed: seed of the model draws.

    Raises:
        ValueError: if the correlation stays above 1/e up to ``max_lag`` (tiles too small for
            the correlation, or a field that is not stationary, such as raw probabilities).
    """
    rho = correlogram(residual, valid, max_lag)
    profile, distance = _radial(rho)
    below = np.flatnonzero(profile < math.exp(-1.0))
    if below.size == 0:
        raise ValueError(
            f"The correlation stays above 1/e up to a lag of {len(profile) - 1} px; use larger "
            "tiles (or a larger max_lag), and residuals label - probability rather than a field "
            "with large-scale structure."
        )
    first = int(below[0])
    before, after = profile[first - 1], profile[first]
    length = first - 1 + (before - math.exp(-1.0)) / (before - after)
    non_positive = np.flatnonzero(profile <= 0)
    radius = min(int(math.ceil(LAG_LIMIT * length)), len(profile) - 1,
                 int(non_positive[0]) - 1 if non_positive.size else len(profile) - 1)
    integral = float(np.nansum(rho[distance <= radius]))
    block = max(1, round(math.sqrt(max(integral, 1.0))))
    if probability is not None:
        p = np.asarray(probability, dtype=np.float64)
        if p.shape != np.shape(residual):
            raise ValueError(f"probability {p.shape} and residual {np.shape(residual)} must "
                             "have the same shape.")
        known = np.isfinite(p) & np.isfinite(residual)
        if valid is not None:
            known &= np.broadcast_to(np.asarray(valid, dtype=bool), p.shape)
        p = np.where(known, p, np.nan)
        rng = np.random.default_rng(seed)
        while _model_integral(p, block, radius, MODEL_DRAWS, rng) < integral:
            block += 1
    return BlockSize(float(length), block, radius)


def glacier_probability(classes: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Calibrated glacier probability from a class raster and its calibrated confidence.

    Confidence is the calibrated chance that the predicted class is right (deployment's
    ``confidence.tif``), so ``p = c`` where the class is glacier (1) and ``1 - c`` where it is
    not (0); NaN where the class is nodata (any other value) or the confidence is not finite.
    """
    classes = np.asarray(classes)
    confidence = np.asarray(confidence, dtype=np.float64)
    if classes.shape != confidence.shape:
        raise ValueError(f"classes {classes.shape} and confidence {confidence.shape} differ in "
                         "shape; they must be the same grid.")
    probability = np.where(classes == 1, confidence, 1.0 - confidence)
    return np.where(((classes == 0) | (classes == 1)) & np.isfinite(confidence), probability,
                    np.nan)


@dataclass(frozen=True)
class AreaSamples:
    """Drawn true areas per glacier zone and for the scene.

    Attributes:
        labels: zone labels, ``(K,)``.
        expected_km2: expected area per zone, ``sum(p * pixel area)``, ``(K,)``.
        samples_km2: drawn areas, ``(samples, K)``.
        scene_expected_km2: expected glacier area of all valid pixels.
        scene_samples_km2: drawn glacier areas of all valid pixels, ``(samples,)``.
        block_px: block side used.
        seed: seed of the draws.
    """

    labels: np.ndarray
    expected_km2: np.ndarray
    samples_km2: np.ndarray
    scene_expected_km2: float
    scene_samples_km2: np.ndarray
    block_px: int
    seed: int

    def interval(self, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Per-zone ``(low, high)`` quantiles at ``(1 - level) / 2`` and ``(1 + level) / 2``."""
        low, high = np.quantile(self.samples_km2, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return low, high

    def scene_interval(self, level: float = LEVEL) -> tuple[float, float]:
        """The scene's ``(low, high)`` interval."""
        low, high = np.quantile(self.scene_samples_km2, [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)


def bootstrap_areas(probability: np.ndarray, zones: np.ndarray, pixel_area_km2: np.ndarray,
                    block_px: int, samples: int = SAMPLES, seed: int = 0,
                    shift: AcquisitionShift | None = None) -> AreaSamples:
    """Draw true glacier areas with block-correlated errors (see the module docstring).

    Only pixels with ``0 < p < 1`` are drawn (about 10 ms per draw for half a million of them
    on one core, so 1000 draws of a Landsat-size scene take seconds).

    Args:
        probability: calibrated glacier probability ``(H, W)``; NaN where nodata.
        zones: int ``(H, W)``, the glacier each pixel counts towards (0: none, scene only).
        pixel_area_km2: ``(H, W)`` pixel areas.
        block_px: block side in pixels (:func:`choose_block_size`).
        samples: number of draws.
        seed: seed of the draws.
        shift: the acquisition's calibration shift; None draws the calibrated probabilities
            as they are (no error shared by the whole scene).
    """
    probability = np.asarray(probability, dtype=np.float64)
    zones = np.asarray(zones)
    if zones.shape != probability.shape or np.shape(pixel_area_km2) != probability.shape:
        raise ValueError(f"probability {probability.shape}, zones {zones.shape} and pixel areas "
                         f"{np.shape(pixel_area_km2)} must have the same shape.")
    valid = np.isfinite(probability)
    if ((probability[valid] < 0) | (probability[valid] > 1)).any():
        raise ValueError("probability must lie in [0, 1] (NaN for nodata).")
    if block_px < 1 or samples < 1:
        raise ValueError(f"block_px and samples must be >= 1; got {block_px}, {samples}.")
    labels = np.unique(zones[valid & (zones > 0)])
    index = np.zeros(int(zones.max(initial=0)) + 1, dtype=np.int64)
    index[labels] = np.arange(1, len(labels) + 1)
    zone = np.where(valid, index[np.where(valid, zones, 0)], 0)
    areas = np.asarray(pixel_area_km2, dtype=np.float64)
    p = np.where(valid, probability, 0.0)
    expected = np.bincount(zone.ravel(), weights=(p * areas).ravel(), minlength=len(labels) + 1)
    # pixels with p = 0 or 1 come out the same in every draw; only the others are drawn
    certain = np.bincount(zone[p == 1], weights=areas[p == 1], minlength=len(labels) + 1)
    rows, cols = np.nonzero((p > 0) & (p < 1))
    p_open, area_open, zone_open = p[rows, cols], areas[rows, cols], zone[rows, cols]
    rng = np.random.default_rng(seed)
    shifts = np.zeros(samples) if shift is None else shift.draw(rng, samples)
    logits = special.logit(p_open)
    drawn = np.empty((samples, len(labels) + 1))
    shifted_expected = np.zeros(len(labels) + 1)
    for draw in range(samples):
        p_draw = p_open if shift is None else special.expit(logits + shifts[draw])
        glacier = _levels(rows, cols, block_px, p.shape, rng) < p_draw
        drawn[draw] = np.bincount(zone_open[glacier], weights=area_open[glacier],
                                  minlength=len(labels) + 1)
        if shift is not None:
            shifted_expected += np.bincount(zone_open, weights=p_draw * area_open,
                                            minlength=len(labels) + 1) / samples
    drawn += certain
    if shift is not None:
        expected = certain + shifted_expected
    return AreaSamples(labels, expected[1:], drawn[:, 1:], float(expected.sum()),
                       drawn.sum(axis=1), int(block_px), int(seed))

