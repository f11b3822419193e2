"""TensorFlow runner: the Keras model itself (BatchNormalization folded), as deployment ran it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from glacier_mapping.inference import inference_model, predict_windows, resolve_precision
from glacier_mapping.models import load_model


class TensorFlowRunner:
    """Runs :func:`glacier_mapping.inference.predict_windows` on the model's inference copy.

    The only backend with MC dropout and with TensorFlow's bfloat16 path.
    """

    backend = "tensorflow"

    def __init__(self, model_path: str, precision: str) -> None:
        self.precision = resolve_precision(precision)
        model = load_model(model_path)
        self.inputs = {name: tuple(tensor.shape[1:]) for name, tensor in model.input.items()}
        # only the returned copy is kept: one set of weights in memory
        self.model = inference_model(model, self.precision, fold=True)

    def predict(self, batch: Mapping[str, np.ndarray], location: np.ndarray | None = None,
                tta: bool = False, mc_passes: int = 0) -> np.ndarray:
        """Probabilities ``(B, P, P, classes)`` of a batch of windows."""
        return predict_windows(self.model, batch, tta=tta, mc_passes=mc_passes,
                               location=location)
