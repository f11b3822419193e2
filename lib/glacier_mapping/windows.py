"""Windows of an image: where they lie, how overlapping ones blend, what a model is given.

Pure NumPy (no TensorFlow), so every inference backend (:mod:`glacier_mapping.runtime`) and
the scene loop share it; :mod:`glacier_mapping.inference` re-exports the grid and blending
names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from glacier_mapping.data.schema import LOCATION_INPUT

#: Window blending schemes (see :func:`blending_window`). ``narrow`` is the default, chosen on
#: ``benchmarks/bench_stride.py`` with the quick profile's global GlaViTU at half-patch stride
#: (2026-12-06): it made the map depend least on where the window grid lies (mean probability
#: change when the grid moves by half a stride 0.026, against 0.035 for ``original`` and 0.042
#: for ``uniform``; 3.7 % of pixels change class against 4.5 % and 5.5 %) and gave the highest
#: glacier IoU on the independent split (0.724 against 0.717 and 0.712); on the test split the
#: three were within 0.002 of each other.
BLENDS: tuple[str, ...] = ("narrow", "original", "uniform")
DEFAULT_BLEND = "narrow"
#: Sigma of the ``narrow`` window as a fraction of the patch size (as in nnU-Net).
NARROW_SIGMA_FRACTION = 1.0 / 8.0
#: Sigma of the ``original`` window in coordinates scaled to [-1, 1] across the window.
ORIGINAL_SIGMA = 1.0


def narrow_window(patch_size: int) -> np.ndarray:
    """Return the ``narrow`` blending weights: a Gaussian with sigma = patch / 8, peak 1.

    The weights are ``exp(-d^2 / (2 sigma^2))`` with ``d`` the pixel distance to the window
    centre (nnU-Net's choice). They fall to about 1e-7 in the corners, so each pixel takes its
    value almost only from the windows whose centres are nearest: border pixels, where the model
    sees the least context, count little. The farthest corner is less than ``patch_size /
    sqrt(2)`` away, so every weight exceeds ``exp(-16)``: strictly positive, also in float32.

    Args:
        patch_size: Window side in pixels.

    Returns:
        A float32 array of shape ``(patch_size, patch_size)``.
    """
    _check_window_size(patch_size)
    sigma = patch_size * NARROW_SIGMA_FRACTION
    offsets = np.arange(patch_size, dtype=np.float64) - (patch_size - 1) / 2.0
    profile = np.exp(-(offsets**2) / (2.0 * sigma**2))
    window = np.outer(profile, profile)
    return (window / window.max()).astype(np.float32)


def original_window(patch_size: int) -> np.ndarray:
    """Return the ``original`` blending weights: the original GlaViTU implementation's kernel.

    A radial Gaussian ``exp(-r^2 / (2 sigma^2))`` with sigma 1, where ``r^2 = x^2 + y^2`` and
    ``x`` and ``y`` run from -1 to 1 across the window (``linspace(-1, 1, P)``). The corner
    weight is ``exp(-1)`` (0.37) of the centre's, so windows overlap broadly. The original
    scales the kernel by a constant (centre weight about 1.25); the blend is a weighted mean,
    so the constant cancels and the peak here is 1.

    Args:
        patch_size: Window side in pixels.

    Returns:
        A float32 array of shape ``(patch_size, patch_size)``.
    """
    _check_window_size(patch_size)
    axis = np.linspace(-1.0, 1.0, patch_size, dtype=np.float64)
    radius2 = axis[:, None] ** 2 + axis[None, :] ** 2
    window = np.exp(-radius2 / (2.0 * ORIGINAL_SIGMA**2))
    return (window / window.max()).astype(np.float32)


def blending_window(patch_size: int, blend: str = DEFAULT_BLEND) -> np.ndarray:
    """Return the weights of one window for the blending scheme ``blend``.

    ``narrow`` (:func:`narrow_window`), ``original`` (:func:`original_window`, to reproduce the
    original implementation's whole-scene probabilities) or ``uniform`` (all ones: the plain
    mean of the overlapping windows).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r}: choose one of {list(BLENDS)}.")
    if blend == "original":
        return original_window(patch_size)
    if blend == "uniform":
        _check_window_size(patch_size)
        return np.ones((patch_size, patch_size), np.float32)
    return narrow_window(patch_size)


def _check_window_size(patch_size: int) -> None:
    """Refuse a window side below one pixel."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}.")


def window_origins(height: int, width: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Return the top-left corners of windows that cover a ``height x width`` image.

    Windows start every ``stride`` pixels; where the last one would stop short of the edge
    an extra window is shifted flush to it, so borders are covered.

    Raises:
        ValueError: If the image is smaller than one patch (pad it first) or the stride is
            not in ``[1, patch_size]``.
    """
    if not 1 <= stride <= patch_size:
        raise ValueError(f"stride must be in [1, patch_size={patch_size}], got {stride}.")
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"Image {height}x{width} is smaller than patch_size={patch_size}; pad it to at "
            "least one patch (predict_array does this)."
        )
    return [
        (row, col)
        for row in _starts(height, patch_size, stride)
        for col in _starts(width, patch_size, stride)
    ]


def _starts(length: int, patch_size: int, stride: int) -> list[int]:
    """Return window starts along one axis, the last one flush with the edge."""
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] != length - patch_size:
        starts.append(length - patch_size)
    return starts


class BlendedRows(NamedTuple):
    """Finished rows of a :class:`WindowBlender`: image rows ``[top, top + len(probs))``."""

    top: int
    probs: np.ndarray
    mask: np.ndarray | None


class WindowBlender:
    """Blends the probabilities of overlapping windows into an image, one row of windows at a time.

    The windows are those of :func:`window_origins` (:attr:`origins`, row by row), added in that
    order. Each window's probabilities are weighted by :func:`blending_window` and summed in
    float32; a pixel's result is its weighted sum divided by its summed weights. As soon as a row
    of windows is complete, :meth:`add` returns the rows no later window touches and drops them
    from the buffer, so memory holds at most one patch of rows (``patch_size x width``), whatever
    the image height. :func:`predict_array` (benchmark tiles) and
    :func:`glacier_mapping.deploy.deploy_scene` (whole scenes) both blend with it.

    Args:
        height: Image height in pixels (at least ``patch_size``).
        width: Image width in pixels (at least ``patch_size``).
        patch_size: Window side in pixels.
        stride: Window step (see :func:`window_origins`).
        blend: Window weights, one of :data:`BLENDS` (see :func:`blending_window`).
    """

    def __init__(self, height: int, width: int, patch_size: int, stride: int,
                 blend: str = DEFAULT_BLEND) -> None:
        self.origins = window_origins(height, width, patch_size, stride)
        self.window = blending_window(patch_size, blend)
        self.height, self.patch_size = height, patch_size
        self.top = 0  # first image row of the buffer
        self.weights = np.zeros((0, width), np.float32)
        self.sums: np.ndarray | None = None  # (rows, width, classes), made by the first window
        self.mask: np.ndarray | None = None
        self._added = 0

    def add(self, window_probs: np.ndarray, row: int, col: int,
            mask: np.ndarray | None = None) -> BlendedRows | None:
        """Add the next window's ``(patch, patch, classes)`` probabilities at ``(row, col)``.

        Args:
            window_probs: The window's probabilities.
            row: Top row of the window, as in :attr:`origins`.
            col: Left column of the window, as in :attr:`origins`.
            mask: Optional boolean ``(patch, patch)`` values carried to the result unblended
                (deployment passes which pixels hold data); give one with every window or none.

        Returns:
            The finished rows when this window completes a row of windows, else None.
        """
        if self._added == len(self.origins) or (row, col) != self.origins[self._added]:
            expected = self.origins[self._added] if self._added < len(self.origins) else "none"
            raise ValueError(
                f"Window at ({row}, {col}) is out of order; add the windows of origins in "
                f"order (next: {expected})."
            )
        size = self.patch_size
        classes = window_probs.shape[-1] if self.sums is None else self.sums.shape[-1]
        if window_probs.shape != (size, size, classes):
            raise ValueError(
                f"window_probs must have shape {(size, size, classes)}, got {window_probs.shape}."
            )
        if self.sums is None:  # the first window
            width = self.weights.shape[1]
            self.sums = np.zeros((0, width, classes), np.float32)
            self.mask = None if mask is None else np.zeros((0, width), bool)
        elif (mask is None) != (self.mask is None):
            raise ValueError("Give a mask with every window or with none.")
        self._extend_to(row + size)
        rows, cols = slice(row - self.top, row - self.top + size), slice(col, col + size)
        self.sums[rows, cols] += window_probs * self.window[..., None]
        self.weights[rows, cols] += self.window
        if self.mask is not None:
            self.mask[rows, cols] = mask
        self._added += 1
        if self._added == len(self.origins):
            return self._pop(self.height)
        next_row = self.origins[self._added][0]
        return None if next_row == row else self._pop(next_row)

    def _extend_to(self, bottom: int) -> None:
        """Grow the buffer so that it covers image rows up to ``bottom`` (exclusive)."""
        extra = bottom - self.top - len(self.weights)
        if extra > 0:
            width = self.weights.shape[1]
            self.sums = np.concatenate(
                [self.sums, np.zeros((extra, width, self.sums.shape[-1]), np.float32)]
            )
            self.weights = np.concatenate([self.weights, np.zeros((extra, width), np.float32)])
            if self.mask is not None:
                self.mask = np.concatenate([self.mask, np.zeros((extra, width), bool)])

    def _pop(self, bottom: int) -> BlendedRows:
        """Remove and return the blended rows ``[top, bottom)``."""
        count = bottom - self.top
        finished = BlendedRows(
            self.top,
            self.sums[:count] / self.weights[:count, :, None],
            None if self.mask is None else self.mask[:count],
        )
        self.sums, self.weights = self.sums[count:], self.weights[count:]
        if self.mask is not None:
            self.mask = self.mask[count:]
        self.top = bottom
        return finished


def select_inputs(names: list[str] | tuple[str, ...], batch: Mapping[str, np.ndarray],
                  location: np.ndarray | None) -> dict[str, np.ndarray]:
    """The inputs ``names`` (float32) from ``batch``, with the location vector broadcast.

    Args:
        names: The model's input names.
        batch: Input name -> ``(B, ...)`` arrays (others are ignored).
        location: Location vector ``(L,)`` for every window, or ``(B, L)``.

    Raises:
        ValueError: for arrays of different batch sizes, a missing input or location.
    """
    if not names:
        raise ValueError("The model must take a dict of named inputs (sensor names).")
    sizes = {np.shape(array)[0] for array in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"batch arrays differ in batch size: {sorted(sizes)}.")
    count = sizes.pop()
    inputs = {name: np.asarray(batch[name], dtype=np.float32) for name in names if name in batch}
    if LOCATION_INPUT in names and (location is not None or LOCATION_INPUT not in inputs):
        if location is None:
            raise ValueError(
                f"The model takes a {LOCATION_INPUT!r} input; pass location= (a region "
                "one-hot, a soft region vector or sin/cos coordinates)."
            )
        vector = np.asarray(location, dtype=np.float32)
        inputs[LOCATION_INPUT] = np.broadcast_to(
            vector if vector.ndim == 2 else vector[None], (count, vector.shape[-1])
        )
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"The model needs inputs {missing}; got {sorted(batch)}.")
    return inputs


def dihedral(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Flip (left-right) then rotate ``(B, H, W, C)`` windows by ``turns`` x 90 degrees."""
    array = array[:, :, ::-1] if flip else array
    return np.ascontiguousarray(np.rot90(array, k=turns, axes=(1, 2)))


def inverse_dihedral(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Undo :func:`dihedral`."""
    array = np.rot90(array, k=-turns, axes=(1, 2))
    return np.ascontiguousarray(array[:, :, ::-1] if flip else array)
