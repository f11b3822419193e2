"""Did a training run level off? The rule every model card and finding uses.

A run has *levelled off* when the last quarter of its epochs (at least
:data:`MIN_WINDOW` epochs) raised the best validation glacier IoU by less than
:data:`TOLERANCE`. The checkpoint kept is the one with the best validation IoU, so this asks
directly whether more of the same training was still moving the model a finding rests on.

Why these numbers: 0.01 IoU is below the seed-to-seed spread of the quick profile's models
(chapter 04 measures a few hundredths), so a smaller gain could not change a verdict; a quarter
of the run (two epochs at least) spans the end of the last cosine cycle, where the learning rate
is low and a model still improving shows it. A run shorter than :data:`MIN_EPOCHS` epochs has too
little history before the window to judge and counts as not levelled off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

#: Largest gain of the best validation IoU in the final window that still counts as levelled.
TOLERANCE = 0.01
#: Smallest final window, in epochs.
MIN_WINDOW = 2
#: Shortest run that can be judged (a window plus as many epochs before it).
MIN_EPOCHS = 2 * MIN_WINDOW


@dataclass(frozen=True)
class Convergence:
    """The verdict of :func:`assess` on one training history.

    Attributes:
        converged: Whether validation IoU levelled off.
        final_gain: Best validation IoU of the final window minus the best before it (NaN
            when the run is too short to judge).
        window: Epochs in the final window.
        epochs: Epochs run.
        reason: One sentence saying why.
    """

    converged: bool
    final_gain: float
    window: int
    epochs: int
    reason: str

    def to_json(self) -> dict:
        """A JSON-safe dict (NaN as None) for a model card."""
        data = asdict(self)
        if not math.isfinite(self.final_gain):
            data["final_gain"] = None
        return data


def validation_column(history: pd.DataFrame) -> str:
    """The validation glacier-IoU column of a Keras history (``val_..._glacier_iou``)."""
    columns = [c for c in history.columns if c.startswith("val_") and c.endswith("glacier_iou")]
    if not columns:
        raise ValueError(
            f"The training history has no validation glacier-IoU column (columns: "
            f"{list(history.columns)}); train with a validation split."
        )
    return columns[0]


def assess(history: pd.DataFrame, tolerance: float = TOLERANCE) -> Convergence:
    """Judge whether validation glacier IoU had levelled off by the end of training."""
    values = history[validation_column(history)].astype(float).tolist()
    epochs = len(values)
    window = max(MIN_WINDOW, math.ceil(epochs / 4))
    if epochs < MIN_EPOCHS:
        return Convergence(False, float("nan"), window, epochs,
                           f"only {epochs} epoch(s): too short to judge (at least {MIN_EPOCHS})")
    gain = max(values[-window:]) - max(values[:-window])
    if gain < tolerance:
        return Convergence(True, gain, window, epochs,
                           f"the last {window} epochs raised the best validation IoU by "
                           f"{gain:+.3f} (< {tolerance})")
    return Convergence(False, gain, window, epochs,
                       f"still improving: the last {window} epochs raised the best validation "
                       f"IoU by {gain:+.3f} (>= {tolerance})")
