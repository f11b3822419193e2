"""Pixel confidence, reliability tables and expected calibration error.

Confidence is one minus the normalised binary Shannon entropy of the softmax output, as in the
original code. A :class:`ReliabilityTable` accumulates per-bin counts over any number of tiles
with bounded memory; :class:`CalibrationData` adds a bounded pixel sample for the calibrators
that fit on pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.data.schema import NUM_CLASSES

#: Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before logs (as in the original).
PROB_EPS = 1e-6
#: Bins of the reliability table used for ECE and for fitting the calibrators.
ECE_BINS = 100
#: Bins of the reliability diagrams.
DIAGRAM_BINS = 10


def confidence(probs: np.ndarray) -> np.ndarray:
    """Pixel confidence ``1 - H(p) / log 2`` of two-class softmax probabilities.

    Args:
        probs: Softmax probabilities, shape ``(..., 2)``.

    Returns:
        Confidence in [0, 1], shape ``probs.shape[:-1]``: 0 for (0.5, 0.5), ~1 for one-hot.

    Raises:
        ValueError: if the last axis does not hold two classes.
    """
    probs = np.asarray(probs)
    if probs.ndim == 0 or probs.shape[-1] != NUM_CLASSES:
        raise ValueError(
            f"probs must have shape (..., {NUM_CLASSES}) (softmax over background, glacier); "
            f"got {probs.shape}."
        )
    dtype = probs.dtype if np.issubdtype(probs.dtype, np.floating) else np.float64
    p = np.clip(probs.astype(dtype, copy=False), PROB_EPS, 1.0 - PROB_EPS)
    entropy = -np.sum(p * np.log(p), axis=-1)
    return np.clip(1.0 - entropy / np.log(2.0), 0.0, 1.0).astype(dtype, copy=False)


def correct_predictions(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether the arg-max class of ``probs`` equals the label, per pixel.

    Args:
        probs: Softmax probabilities, shape ``(..., 2)``.
        labels: Class indices of shape ``probs.shape[:-1]`` or one-hot of ``probs.shape``.

    Returns:
        Boolean array of shape ``probs.shape[:-1]``.

    Raises:
        ValueError: if the shapes do not fit together.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if labels.shape == probs.shape:
        labels = np.argmax(labels, axis=-1)
    if labels.shape != probs.shape[:-1]:
        raise ValueError(
            f"labels must be class indices of shape {probs.shape[:-1]} or one-hot of shape "
            f"{probs.shape}; got {labels.shape}."
        )
    return np.argmax(probs, axis=-1) == labels


def _check_unit_interval(values: np.ndarray, name: str) -> None:
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0.0
                            and values.max() <= 1.0):
        raise ValueError(f"{name} must be finite and in [0, 1]; mask invalid pixels with `valid`.")


def _flat_valid(arrays: list[np.ndarray], valid: np.ndarray | None, names: str) -> list[np.ndarray]:
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays) or (valid is not None and valid.shape != shape):
        shapes = [a.shape for a in arrays] + ([valid.shape] if valid is not None else [])
        raise ValueError(f"{names} must all have the same shape; got {shapes}.")
    if valid is None:
        return [a.ravel() for a in arrays]
    mask = valid.astype(bool).ravel()
    return [a.ravel()[mask] for a in arrays]


class ReliabilityTable:
    """Per-bin pixel counts, summed confidence and summed correctness over equal-width bins.

    Memory is ``3 * n_bins`` numbers however many pixels are added, so a whole validation set
    can be streamed tile by tile (or window by window) through :meth:`update`.

    Args:
        n_bins: Number of equal-width confidence bins on [0, 1] (100 for ECE, 10 for diagrams).

    Raises:
        ValueError: if ``n_bins`` is not a positive integer.
    """

    def __init__(self, n_bins: int = ECE_BINS) -> None:
        if int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}.")
        self.n_bins = int(n_bins)
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.confidence_sum = np.zeros(self.n_bins, dtype=np.float64)
        self.correct_sum = np.zeros(self.n_bins, dtype=np.float64)

    @property
    def total(self) -> int:
        """Number of pixels added so far."""
        return int(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        """Bin edges, shape ``(n_bins + 1,)``."""
        return np.linspace(0.0, 1.0, self.n_bins + 1)

    def update(
        self, conf: np.ndarray, correct: np.ndarray, valid: np.ndarray | None = None
    ) -> ReliabilityTable:
        """Add pixels to the table (in place).

        Args:
            conf: Confidence in [0, 1], any shape.
            correct: Whether each pixel's predicted class is right, same shape.
            valid: Optional mask of pixels to use, same shape (e.g. not nodata).

        Returns:
            The table itself, for chaining.

        Raises:
            ValueError: if the shapes differ or a valid confidence lies outside [0, 1].
        """
        conf_arr, correct_arr = _flat_valid(
            [np.asarray(conf, dtype=np.float64), np.asarray(correct)],
            None if valid is None else np.asarray(valid),
            "conf, correct and valid",
        )
        _check_unit_interval(conf_arr, "conf")
        index = np.minimum((conf_arr * self.n_bins).astype(np.int64), self.n_bins - 1)
        self.counts += np.bincount(index, minlength=self.n_bins)
        self.confidence_sum += np.bincount(index, weights=conf_arr, minlength=self.n_bins)
        self.correct_sum += np.bincount(
            index, weights=correct_arr.astype(np.float64), minlength=self.n_bins
        )
        return self

    def update_from_probs(
        self, probs: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None
    ) -> ReliabilityTable:
        """Add pixels given softmax probabilities and labels (uncalibrated confidence).

        Args:
            probs: Softmax probabilities, shape ``(..., 2)``.
            labels: Class indices ``(...)`` or one-hot ``(..., 2)``.
            valid: Optional mask of shape ``probs.shape[:-1]``.

        Returns:
            The table itself.
        """
        return self.update(confidence(probs), correct_predictions(probs, labels), valid)

    def merge(self, other: ReliabilityTable) -> ReliabilityTable:
        """Return a new table holding the pixels of both tables.

        Raises:
            ValueError: if the bin counts differ.
        """
        if other.n_bins != self.n_bins:
            raise ValueError(
                f"Cannot merge tables with {self.n_bins} and {other.n_bins} bins; rebin first."
            )
        merged = ReliabilityTable(self.n_bins)
        merged.counts = self.counts + other.counts
        merged.confidence_sum = self.confidence_sum + other.confidence_sum
        merged.correct_sum = self.correct_sum + other.correct_sum
        return merged

    def rebin(self, n_bins: int) -> ReliabilityTable:
        """Return the table with ``n_bins`` coarser bins (e.g. 100 -> 10 for a diagram).

        Raises:
            ValueError: if ``n_bins`` does not divide the current number of bins.
        """
        if n_bins < 1 or self.n_bins % n_bins:
            raise ValueError(
                f"Cannot rebin {self.n_bins} bins to {n_bins}: n_bins must divide {self.n_bins}."
            )
        factor = self.n_bins // n_bins
        coarse = ReliabilityTable(n_bins)
        coarse.counts = self.counts.reshape(n_bins, factor).sum(axis=1)
        coarse.confidence_sum = self.confidence_sum.reshape(n_bins, factor).sum(axis=1)
        coarse.correct_sum = self.correct_sum.reshape(n_bins, factor).sum(axis=1)
        return coarse

    def table(self) -> pd.DataFrame:
        """Per-bin summary: ``bin_lower, bin_upper, count, mean_confidence, accuracy``.

        Mean confidence and accuracy are NaN in empty bins.
        """
        edges = self.edges
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(self.counts > 0, self.confidence_sum / self.counts, np.nan)
            accuracy = np.where(self.counts > 0, self.correct_sum / self.counts, np.nan)
        return pd.DataFrame({
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": self.counts.copy(),
            "mean_confidence": mean_conf,
            "accuracy": accuracy,
        })

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (exact: integers and float64 sums)."""
        return {
            "kind": "reliability_table",
            "n_bins": self.n_bins,
            "counts": self.counts.tolist(),
            "confidence_sum": self.confidence_sum.tolist(),
            "correct_sum": self.correct_sum.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReliabilityTable:
        """Rebuild a table written by :meth:`to_json`."""
        table = cls(data["n_bins"])
        table.counts = np.asarray(data["counts"], dtype=np.int64)
        table.confidence_sum = np.asarray(data["confidence_sum"], dtype=np.float64)
        table.correct_sum = np.asarray(data["correct_sum"], dtype=np.float64)
        if any(a.shape != (table.n_bins,) for a in
               (table.counts, table.confidence_sum, table.correct_sum)):
            raise ValueError(f"Reliability table JSON arrays must have {table.n_bins} entries.")
        return table


def nonempty_bins(table: ReliabilityTable) -> pd.DataFrame:
    """The table's bins that hold pixels (``ValueError`` when there are none)."""
    frame = table.table()
    frame = frame[frame["count"] > 0]
    if frame.empty:
        raise ValueError("The reliability table is empty; add pixels with update() first.")
    return frame


def expected_calibration_error(table: ReliabilityTable, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of ``count / N * |accuracy - mean confidence|``.

    Args:
        table: Reliability table; rebinned to ``n_bins`` if it is finer.
        n_bins: Number of bins of the ECE (the original uses 100).

    Returns:
        The expected calibration error in [0, 1].

    Raises:
        ValueError: if the table is empty or cannot be rebinned to ``n_bins``.
    """
    if table.n_bins != n_bins:
        table = table.rebin(n_bins)
    frame = nonempty_bins(table)
    gaps = np.abs(frame["accuracy"] - frame["mean_confidence"])
    return float(np.sum(frame["count"] * gaps) / frame["count"].sum())


def reliability_diagram_data(table: ReliabilityTable, n_bins: int = DIAGRAM_BINS) -> pd.DataFrame:
    """Per-bin data of a reliability diagram.

    Args:
        table: Reliability table, rebinned to ``n_bins`` if finer.
        n_bins: Number of bars (the original draws 10).

    Returns:
        DataFrame with ``bin_lower, bin_upper, bin_center, count, fraction, mean_confidence,
        accuracy, gap`` (``gap = accuracy - mean_confidence``, negative when over-confident).
    """
    if table.n_bins != n_bins:
        table = table.rebin(n_bins)
    frame = table.table()
    total = max(table.total, 1)
    frame.insert(2, "bin_center", (frame["bin_lower"] + frame["bin_upper"]) / 2)
    frame.insert(4, "fraction", frame["count"] / total)
    frame["gap"] = frame["accuracy"] - frame["mean_confidence"]
    return frame


class CalibrationData:
    """Everything the calibrators fit on, gathered in one bounded-memory pass over tiles.

    Holds a :class:`ReliabilityTable` (for the kernel ridge and isotonic calibrators) and a
    uniform random sample of at most ``max_pixels`` (probabilities, label) pixels (for
    temperature scaling). The sample is a bottom-k sample: each pixel gets a random key and the
    ``max_pixels`` smallest keys are kept, which is a uniform sample without replacement of all
    pixels seen.

    Args:
        n_bins: Bins of the reliability table.
        max_pixels: Size of the pixel sample.
        seed: Seed of the sampling keys.

    Raises:
        ValueError: if ``max_pixels`` is not positive.
    """

    def __init__(self, n_bins: int = ECE_BINS, max_pixels: int = 200_000, seed: int = 0) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be positive; got {max_pixels}.")
        self.table = ReliabilityTable(n_bins)
        self.max_pixels = int(max_pixels)
        self._rng = np.random.default_rng(seed)
        self._keys = np.empty(0, dtype=np.float64)
        self._probs = np.empty((0, NUM_CLASSES), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.int8)

    def update(
        self, probs: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None
    ) -> CalibrationData:
        """Add a tile's (or window's) pixels.

        Args:
            probs: Softmax probabilities, shape ``(..., 2)``.
            labels: Class indices ``(...)`` or one-hot ``(..., 2)``.
            valid: Optional mask of shape ``probs.shape[:-1]``.

        Returns:
            The object itself.
        """
        probs = np.asarray(probs)
        labels = np.asarray(labels)
        if labels.shape == probs.shape:
            labels = np.argmax(labels, axis=-1)
        self.table.update_from_probs(probs, labels, valid)
        flat_probs = probs.reshape(-1, NUM_CLASSES)
        flat_labels = labels.ravel()
        if valid is not None:
            mask = np.asarray(valid).astype(bool).ravel()
            flat_probs, flat_labels = flat_probs[mask], flat_labels[mask]
        keys = self._rng.random(flat_labels.size)
        if self._keys.size >= self.max_pixels:
            keep_new = keys < self._keys.max()
            keys, flat_probs, flat_labels = keys[keep_new], flat_probs[keep_new], flat_labels[
                keep_new]
        keys = np.concatenate([self._keys, keys])
        all_probs = np.concatenate([self._probs, flat_probs.astype(np.float32)])
        all_labels = np.concatenate([self._labels, flat_labels.astype(np.int8)])
        if keys.size > self.max_pixels:
            keep = np.argpartition(keys, self.max_pixels - 1)[: self.max_pixels]
            keys, all_probs, all_labels = keys[keep], all_probs[keep], all_labels[keep]
        self._keys, self._probs, self._labels = keys, all_probs, all_labels
        return self

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The pixel sample: probabilities ``(n, 2)`` float32 and class labels ``(n,)``."""
        return self._probs.copy(), self._labels.astype(np.int64)


