"""Three calibrators behind one interface, stored as JSON (never pickle).

- :class:`KernelRidgeCalibrator`, the original method: kernel ridge regression with a
  Laplacian kernel from bin mean confidence to bin accuracy, anchors (0, 0) and (1, 1) and the
  per-point regularisation ``alpha_i = 0.01 (1 - w_i)``, ``w_i = (count_i / max count) ** 0.1``.
- :class:`IsotonicCalibrator`, a monotone step function fitted on the same table.
- :class:`TemperatureCalibrator`, temperature scaling of the two-class logit, fitted on a
  sample of validation pixels.

Calibrated confidence always means the probability that the pixel's predicted class is right,
which is what ECE measures and what IoU estimation needs. The entropy confidence of calibrated
*probabilities* is not that (calibrated probabilities (0.9, 0.1) are right 90 % of the time but
have entropy confidence 0.53), so the temperature calibrator's calibrated confidence is the
top-class probability after scaling. Every calibrator exposes ``calibrated_confidence(probs)``
and is stored as JSON with a ``kind`` field read by :func:`load_calibrator`.

Note:
    The original passes the per-point ``alpha`` array to scikit-learn's ``KernelRidge``, which
    reads an ``alpha`` array as one penalty *per target*; with a single target it silently uses
    ``alpha[0]`` for every point. We solve the per-point system as the method describes it.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression

from glacier_mapping.calibration.reliability import (
    PROB_EPS,
    CalibrationData,
    ReliabilityTable,
    confidence,
    nonempty_bins,
)
from glacier_mapping.data.schema import NUM_CLASSES
from glacier_mapping.store import atomic_write_json

#: Diagonal jitter added to the kernel ridge system: anchors and the most populated bin have
#: ``alpha = 0``, and a bin whose mean confidence equals an anchor would make it singular.
KERNEL_RIDGE_JITTER = 1e-10
_PREDICT_CHUNK = 16_384
_FORMAT_VERSION = 1


class Calibrator(ABC):
    """Common interface of all calibrators.

    Fit with :meth:`fit`, apply with :meth:`calibrated_confidence`, store with :meth:`save` and
    read back with :func:`load_calibrator`.
    """

    #: Name written to the ``kind`` field of the JSON file.
    kind: ClassVar[str]

    @abstractmethod
    def fit(self, data: CalibrationData | ReliabilityTable) -> Calibrator:
        """Fit on validation data and return ``self``."""

    @abstractmethod
    def calibrated_confidence(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated confidence of softmax probabilities ``(..., 2)``, shape ``(...)``."""

    @abstractmethod
    def _parameters(self) -> dict[str, Any]:
        """The fitted parameters as JSON values."""

    @classmethod
    @abstractmethod
    def from_json(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a calibrator from :meth:`to_json` output."""

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form, with ``kind`` and ``format_version``."""
        return {"kind": self.kind, "format_version": _FORMAT_VERSION, **self._parameters()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibrator as JSON, atomically.

        Returns:
            The path written.
        """
        return atomic_write_json(path, self.to_json())


class ConfidenceMapCalibrator(Calibrator):
    """A calibrator that maps (uncalibrated) confidence to calibrated confidence."""

    @abstractmethod
    def predict(self, conf: np.ndarray) -> np.ndarray:
        """Calibrated confidence for confidence values in [0, 1] (any shape)."""

    def calibrated_confidence(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated confidence of softmax probabilities ``(..., 2)``."""
        return self.predict(confidence(probs))

    def _require_fitted(self, fitted: bool) -> None:
        if not fitted:
            raise ValueError(f"{type(self).__name__} is not fitted; call fit() first.")


def _number(data: dict[str, Any], name: str, low: float | None = None, high: float | None = None,
            positive: bool = False) -> float:
    """Field ``name`` of calibrator JSON as a finite float in range, or a ValueError naming it."""
    value = data[name]
    if not _in_range(value, low, high, positive):
        raise ValueError(f"field {name!r} must be {_describe(low, high, positive)}; got {value!r}.")
    return float(value)


def _numbers(data: dict[str, Any], name: str, low: float | None = None,
             high: float | None = None, increasing: bool = False) -> np.ndarray:
    """Field ``name`` as a non-empty float64 array of finite numbers in range (and sorted)."""
    values = data[name]
    if not isinstance(values, list) or not values:
        raise ValueError(f"field {name!r} must be a non-empty list of numbers; got {values!r:.80}.")
    for index, value in enumerate(values):
        if not _in_range(value, low, high, False):
            raise ValueError(f"field {name!r} item {index} must be {_describe(low, high, False)}; "
                             f"got {value!r}.")
    array = np.asarray(values, dtype=np.float64)
    if increasing and np.any(np.diff(array) < 0):
        index = int(np.argmax(np.diff(array) < 0)) + 1
        raise ValueError(f"field {name!r} must be sorted in increasing order; item {index} "
                         f"({array[index]}) is below item {index - 1} ({array[index - 1]}).")
    return array


def _same_length(data: dict[str, Any], first: str, second: str) -> None:
    if len(data[first]) != len(data[second]):
        raise ValueError(f"fields {first!r} ({len(data[first])} values) and {second!r} "
                         f"({len(data[second])} values) must have the same length.")


def _in_range(value: Any, low: float | None, high: float | None,  # noqa: ANN401
              positive: bool) -> bool:
    """Whether ``value`` is a finite real number (not a bool) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        return False
    return ((low is None or value >= low) and (high is None or value <= high)
            and (not positive or value > 0))


def _describe(low: float | None, high: float | None, positive: bool) -> str:
    if positive:
        return "a finite number > 0"
    if low is not None and high is not None:
        return f"a finite number in [{low:g}, {high:g}]"
    return "a finite number" + ("" if low is None else f" >= {low:g}")


def _as_table(data: CalibrationData | ReliabilityTable) -> ReliabilityTable:
    if isinstance(data, CalibrationData):
        return data.table
    if isinstance(data, ReliabilityTable):
        return data
    raise ValueError(
        f"Calibrators fit on a ReliabilityTable or CalibrationData; got {type(data).__name__}."
    )


class KernelRidgeCalibrator(ConfidenceMapCalibrator):
    """The original calibrator: Laplacian-kernel ridge regression, confidence -> accuracy.

    Support points are the non-empty bins' mean confidence plus the anchors 0 and 1. The dual
    coefficients ``a`` solve ``(K + diag(alpha) + jitter I) a = y`` with
    ``K_ij = exp(-gamma |x_i - x_j|)``, targets ``y`` the bin accuracies (0 and 1 at the
    anchors), ``alpha_i = 0.01 (1 - w_i)``, ``w_i = (count_i / max count) ** 0.1`` and
    ``w = 1`` at the anchors. Prediction is ``clip(sum_j a_j exp(-gamma |x - x_j|), 0, 1)``.

    Note:
        Entropy confidence 0 means probabilities (0.5, 0.5), which are right about half the
        time, so the original's (0, 0) anchor (kept here, with ``alpha = 0``) forces a steep
        drop of the curve just above 0; isotonic regression has no such anchor.

    Args:
        gamma: Laplacian kernel scale; 1.0 equals scikit-learn's default ``1 / n_features`` for
            one input feature, which is what the original used.
        alpha_scale: Regularisation scale (0.01 in the original).
        weight_power: Exponent of the count weights (0.1 in the original).

    Raises:
        ValueError: if ``gamma`` is not positive or ``alpha_scale`` is negative.
    """

    kind = "kernel_ridge"

    def __init__(
        self, gamma: float = 1.0, alpha_scale: float = 0.01, weight_power: float = 0.1
    ) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be positive; got {gamma}.")
        if not alpha_scale >= 0:
            raise ValueError(f"alpha_scale must be non-negative; got {alpha_scale}.")
        self.gamma = float(gamma)
        self.alpha_scale = float(alpha_scale)
        self.weight_power = float(weight_power)
        self.support = np.empty(0)
        self.dual_coef = np.empty(0)

    def fit(self, data: CalibrationData | ReliabilityTable) -> KernelRidgeCalibrator:
        """Fit on the reliability table (empty bins skipped); returns ``self``."""
        frame = nonempty_bins(_as_table(data))
        counts = frame["count"].to_numpy(dtype=np.float64)
        weights = np.concatenate([[1.0], (counts / counts.max()) ** self.weight_power, [1.0]])
        x = np.concatenate([[0.0], frame["mean_confidence"].to_numpy(), [1.0]])
        y = np.concatenate([[0.0], frame["accuracy"].to_numpy(), [1.0]])
        alpha = self.alpha_scale * (1.0 - weights)
        system = self._kernel(x, x) + np.diag(alpha + KERNEL_RIDGE_JITTER)
        self.support = x
        self.dual_coef = np.linalg.solve(system, y)
        return self

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-self.gamma * np.abs(a[:, None] - b[None, :]))

    def predict(self, conf: np.ndarray) -> np.ndarray:
        """Calibrated confidence for confidence values (any shape), clipped to [0, 1]."""
        self._require_fitted(self.support.size > 0)
        conf = np.asarray(conf, dtype=np.float64)
        flat = conf.ravel()
        out = np.empty_like(flat)
        for start in range(0, flat.size, _PREDICT_CHUNK):
            chunk = flat[start:start + _PREDICT_CHUNK]
            out[start:start + chunk.size] = self._kernel(chunk, self.support) @ self.dual_coef
        return np.clip(out, 0.0, 1.0).reshape(conf.shape)

    def _parameters(self) -> dict[str, Any]:
        self._require_fitted(self.support.size > 0)
        return {
            "gamma": self.gamma,
            "alpha_scale": self.alpha_scale,
            "weight_power": self.weight_power,
            "support": self.support.tolist(),
            "dual_coef": self.dual_coef.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelRidgeCalibrator:
        """Rebuild from :meth:`to_json` output."""
        calibrator = cls(_number(data, "gamma", positive=True),
                         _number(data, "alpha_scale", low=0.0),
                         _number(data, "weight_power", low=0.0))
        calibrator.support = _numbers(data, "support", 0.0, 1.0)
        calibrator.dual_coef = _numbers(data, "dual_coef")
        _same_length(data, "support", "dual_coef")
        return calibrator


class IsotonicCalibrator(ConfidenceMapCalibrator):
    """Monotone (isotonic) regression from bin mean confidence to bin accuracy.

    Fitted with scikit-learn on the non-empty bins, weighted by their pixel counts; the fitted
    step function's thresholds are stored, and prediction interpolates them linearly with
    ``np.interp`` (constant beyond the ends), so loading needs no scikit-learn object.
    """

    kind = "isotonic"

    def __init__(self) -> None:
        self.x_thresholds = np.empty(0)
        self.y_thresholds = np.empty(0)

    def fit(self, data: CalibrationData | ReliabilityTable) -> IsotonicCalibrator:
        """Fit on the reliability table (empty bins skipped); returns ``self``."""
        frame = nonempty_bins(_as_table(data))
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            frame["mean_confidence"].to_numpy(),
            frame["accuracy"].to_numpy(),
            sample_weight=frame["count"].to_numpy(dtype=np.float64),
        )
        self.x_thresholds = np.asarray(regression.X_thresholds_, dtype=np.float64)
        self.y_thresholds = np.asarray(regression.y_thresholds_, dtype=np.float64)
        return self

    def predict(self, conf: np.ndarray) -> np.ndarray:
        """Calibrated confidence for confidence values (any shape)."""
        self._require_fitted(self.x_thresholds.size > 0)
        return np.interp(np.asarray(conf, dtype=np.float64), self.x_thresholds,
                         self.y_thresholds)

    def _parameters(self) -> dict[str, Any]:
        self._require_fitted(self.x_thresholds.size > 0)
        return {"x_thresholds": self.x_thresholds.tolist(),
                "y_thresholds": self.y_thresholds.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild from :meth:`to_json` output."""
        calibrator = cls()
        calibrator.x_thresholds = _numbers(data, "x_thresholds", 0.0, 1.0, increasing=True)
        calibrator.y_thresholds = _numbers(data, "y_thresholds", 0.0, 1.0, increasing=True)
        _same_length(data, "x_thresholds", "y_thresholds")
        return calibrator


def _glacier_logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p[..., 1]) - np.log(p[..., 0])


class TemperatureCalibrator(Calibrator):
    """Temperature scaling of the two-class logit ``z = log p_glacier - log p_background``.

    Calibrated probabilities are ``sigmoid(z / T)`` for glacier; ``T > 1`` softens
    over-confident outputs. ``T`` minimises the negative log-likelihood of the pixel sample of a
    :class:`CalibrationData` (bounded search over ``log T``). The arg-max class never changes.

    Args:
        temperature: Initial temperature (replaced by :meth:`fit`).
        bounds: Search interval of ``T``.

    Raises:
        ValueError: if the temperature or bounds are not positive.
    """

    kind = "temperature"

    def __init__(self, temperature: float = 1.0, bounds: tuple[float, float] = (0.05, 20.0)
                 ) -> None:
        if not (temperature > 0 and 0 < bounds[0] < bounds[1]):
            raise ValueError(
                f"temperature and bounds must be positive with bounds[0] < bounds[1]; got "
                f"{temperature}, {bounds}."
            )
        self.temperature = float(temperature)
        self.bounds = (float(bounds[0]), float(bounds[1]))

    def fit(self, data: CalibrationData | ReliabilityTable) -> TemperatureCalibrator:
        """Fit ``T`` on the pixel sample of ``data``; returns ``self``.

        Raises:
            ValueError: if ``data`` is a bare reliability table or its sample is empty.
        """
        if not isinstance(data, CalibrationData):
            raise ValueError(
                "TemperatureCalibrator needs pixel probabilities and labels: pass a "
                "CalibrationData (built with update(probs, labels)), not a ReliabilityTable."
            )
        probs, labels = data.sample()
        if labels.size == 0:
            raise ValueError("The CalibrationData pixel sample is empty; call update() first.")
        signed = _glacier_logit(probs) * np.where(labels == 1, 1.0, -1.0)

        def nll(log_t: float) -> float:
            return float(np.mean(np.logaddexp(0.0, -signed / math.exp(log_t))))

        result = minimize_scalar(nll, bounds=np.log(self.bounds), method="bounded",
                                 options={"xatol": 1e-6})
        self.temperature = float(math.exp(result.x))
        return self

    def calibrate_probs(self, probs: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities, shape ``(..., 2)`` like ``probs``."""
        if np.asarray(probs).shape[-1:] != (NUM_CLASSES,):
            raise ValueError(f"probs must have shape (..., {NUM_CLASSES}); got "
                             f"{np.asarray(probs).shape}.")
        glacier = 1.0 / (1.0 + np.exp(-_glacier_logit(probs) / self.temperature))
        return np.stack([1.0 - glacier, glacier], axis=-1)

    def calibrated_confidence(self, probs: np.ndarray) -> np.ndarray:
        """Top-class probability after scaling: the calibrated chance the prediction is right."""
        return np.max(self.calibrate_probs(probs), axis=-1)

    def _parameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "bounds": list(self.bounds)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TemperatureCalibrator:
        """Rebuild from :meth:`to_json` output."""
        bounds = _numbers(data, "bounds", low=0.0)
        if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"field 'bounds' must be two numbers 0 < low < high; got "
                             f"{data['bounds']!r}.")
        return cls(_number(data, "temperature", positive=True), (bounds[0], bounds[1]))


CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.kind: cls for cls in (KernelRidgeCalibrator, IsotonicCalibrator, TemperatureCalibrator)
}


def calibrator_from_json(data: dict[str, Any]) -> Calibrator:
    """Rebuild any calibrator from its JSON dictionary, dispatching on ``kind``.

    Every numeric field is checked: a number (not a string or bool), finite, in range;
    arrays non-empty, of equal length and sorted where the method needs it.

    Raises:
        ValueError: if ``kind`` is missing or unknown, or a field is missing or invalid (the
            message names the field).
    """
    if not isinstance(data, dict):
        raise ValueError(f"a calibrator JSON holds an object with a 'kind' field, not a "
                         f"{type(data).__name__}.")
    kind = data.get("kind")
    if kind not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator kind {kind!r}; expected one of {list(CALIBRATORS)}.")
    version = data.get("format_version", _FORMAT_VERSION)
    try:
        if isinstance(version, bool) or version != _FORMAT_VERSION:
            raise ValueError(f"field 'format_version' is {version!r}; this library reads "
                             f"version {_FORMAT_VERSION}.")
        return CALIBRATORS[kind].from_json(data)
    except KeyError as error:
        raise ValueError(f"invalid {kind} calibrator: the field {error} is missing.") from None
    except ValueError as error:
        raise ValueError(f"invalid {kind} calibrator: {error}") from None


def load_calibrator(path: str | os.PathLike[str]) -> Calibrator:
    """Load a calibrator written by :meth:`Calibrator.save`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a calibrator JSON or a field is invalid (the message
            names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No calibrator file at {path}; fit one and save() it first.")
    fix = ("use a calibrator saved by this library (chapter 05 writes "
           "outputs/<profile>/calibration/<model>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}); {fix}.") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({error}); {fix}.") from None
    try:
        return calibrator_from_json(data)
    except ValueError as error:
        raise ValueError(f"{path}: {str(error).rstrip('.')}. Fix it, or {fix}.") from None
