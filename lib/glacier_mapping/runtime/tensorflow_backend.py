"""TensorFlow runner: the Keras model itself (BatchNormalization folded), as deployment ran it."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from glacier_mapping.inference import (
    inference_model,
    predict_windows,
    predict_windows_spread,
    resolve_precision,
)


class TensorFlowRunner:
    """Runs :func:`glacier_mapping.inference.predict_windows` on the model's inference copy.

    The only backend with MC dropout (and its spread) and with TensorFlow's bfloat16 path.

    Args:
        model: A Keras model with dict inputs and an ``"output"`` head.
        precision: ``float32``, ``bfloat16`` or ``auto``
            (:func:`glacier_mapping.inference.resolve_precision`).

    Raises:
        ValueError: for a precision the model cannot run (see
            :func:`glacier_mapping.inference.inference_model`).
    """

    backend = "tensorflow"

    def __init__(self, model: keras.Model, precision: str) -> None:
        self.precision = resolve_precision(precision)
        self.inputs = ({name: tuple(tensor.shape[1:]) for name, tensor in model.input.items()}
                       if isinstance(model.input, dict) else {})
        # only the returned copy is kept: one set of weights in memory
        self.model = inference_model(model, self.precision, fold=True)

    def predict(self, batch: Mapping[str, np.ndarray], location: np.ndarray | None = None,
                tta: bool = False, mc_passes: int = 0) -> np.ndarray:
        """Probabilities ``(B, P, P, classes)`` of a batch of windows."""
        return predict_windows(self.model, batch, tta=tta, mc_passes=mc_passes,
                               location=location)

    def predict_spread(self, batch: Mapping[str, np.ndarray], mc_passes: int,
                       location: np.ndarray | None = None,
                       tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean probabilities and MC-dropout spread (:func:`predict_windows_spread`)."""
        return predict_windows_spread(self.model, batch, mc_passes, tta=tta, location=location)
