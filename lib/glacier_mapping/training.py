"""Training: focal loss, cosine-restart schedule, glacier IoU, a resumable fit loop."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import ops

from glacier_mapping.config import DEFAULT_LEARNING_RATE, FINETUNE_LEARNING_RATE
from glacier_mapping.data.schema import GLACIER_CLASS
from glacier_mapping.inference import predict_heads
from glacier_mapping.store import atomic_copy, atomic_path, atomic_write_text

OUTPUT_HEAD = "output"
DEEP_SUPERVISION_HEAD = "deepsupervision"
GLACIER_IOU_NAME = "glacier_iou"

BEST_MODEL_FILE = "best.keras"
BEST_CHECKPOINT_FILE = "best.npz"
HISTORY_FILE = "history.csv"
STATE_FILE = "state.json"


#: Attribute of a compiled model naming the setup it was compiled for (see _reuse_compiled).
_COMPILED_FOR = "_glacier_mapping_compiled_for"


@keras.saving.register_keras_serializable(package="glacier_mapping")
class FocalLoss(keras.losses.Loss):
    """Categorical focal loss, ``-sum_c y_c (1 - p_c)^gamma log p_c`` per pixel.

    Works with soft (label-smoothed) targets because every class term is weighted by its
    target probability. Predictions are clipped to ``[epsilon, 1 - epsilon]``.

    Args:
        gamma: Focusing parameter; 0 gives categorical cross-entropy. The original uses 2.
        epsilon: Clipping bound that keeps the logarithm finite.
        name: Loss name.
        **kwargs: Passed to :class:`keras.losses.Loss` (e.g. ``reduction``).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        epsilon: float = 1e-7,
        name: str = "focal_loss",
        **kwargs: Any,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}.")
        if not 0 < epsilon < 0.5:
            raise ValueError(f"FocalLoss epsilon must be in (0, 0.5), got {epsilon}.")
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Return the per-pixel focal loss (class axis summed)."""
        y_pred = ops.clip(ops.convert_to_tensor(y_pred), self.epsilon, 1.0 - self.epsilon)
        y_true = ops.cast(y_true, y_pred.dtype)
        modulation = ops.power(1.0 - y_pred, self.gamma)
        return -ops.sum(y_true * modulation * ops.log(y_pred), axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Return the serialisable configuration."""
        return {**super().get_config(), "gamma": self.gamma, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="glacier_mapping")
class CosineRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay with warm restarts at given cumulative epochs.

    Cycle ``k`` runs from ``restart_epochs[k-1]`` (0 for the first) to ``restart_epochs[k]``;
    within it the rate falls from ``initial_learning_rate`` to
    ``min_fraction * initial_learning_rate`` along half a cosine, then jumps back up. The
    epoch position is continuous (``step / steps_per_epoch``), so the rate changes every step.
    After the last restart epoch the rate stays at its minimum. The original uses 5e-4 with
    restarts at 10, 30, 70 and 150 epochs; finetuning is one cycle from 5e-5 to 0.

    Args:
        initial_learning_rate: Peak rate at the start of every cycle.
        restart_epochs: Strictly increasing cumulative epochs at which cycles end.
        steps_per_epoch: Optimizer steps per epoch.
        min_fraction: Rate at the end of a cycle, as a fraction of the peak.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        restart_epochs: tuple[int, ...] | list[int],
        steps_per_epoch: int,
        min_fraction: float = 0.0,
    ) -> None:
        restarts = tuple(int(epoch) for epoch in restart_epochs)
        _check_restarts(restarts, "restart_epochs")
        if initial_learning_rate <= 0:
            raise ValueError(f"initial_learning_rate must be > 0, got {initial_learning_rate}.")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.restart_epochs = restarts
        self.steps_per_epoch = int(steps_per_epoch)
        self.min_fraction = float(min_fraction)

    def __call__(self, step: Any) -> Any:
        """Return the learning rate at optimizer step ``step``."""
        epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
        ends = ops.convert_to_tensor(self.restart_epochs, dtype="float32")
        starts = ops.convert_to_tensor((0, *self.restart_epochs[:-1]), dtype="float32")
        completed = ops.sum(ops.cast(ops.greater_equal(epoch, ends), "int32"))
        cycle = ops.minimum(completed, len(self.restart_epochs) - 1)
        start = ops.take(starts, cycle)
        end = ops.take(ends, cycle)
        progress = ops.clip((epoch - start) / (end - start), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        fraction = self.min_fraction + (1.0 - self.min_fraction) * cosine
        return self.initial_learning_rate * fraction

    def get_config(self) -> dict[str, Any]:
        """Return the serialisable configuration."""
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "restart_epochs": list(self.restart_epochs),
            "steps_per_epoch": self.steps_per_epoch,
            "min_fraction": self.min_fraction,
        }


@keras.saving.register_keras_serializable(package="glacier_mapping")
class FusedAdam(keras.optimizers.Adam):
    """Keras Adam whose per-variable update is TensorFlow's single fused ``ApplyAdam`` op.

    Same update rule as :class:`keras.optimizers.Adam` (bias-corrected step size, epsilon
    added to the square root of the second moment); the fused op cuts the train-step graph by
    about a dozen ops per variable, so tracing GlaViTU's train step takes about 7 s instead of
    11 s on a 2-core CPU (it is retraced for every model a chapter trains). Plain Adam's
    options ``amsgrad`` and EMA are not supported.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.amsgrad or self.use_ema:
            raise ValueError("FusedAdam supports neither amsgrad nor use_ema; use keras Adam.")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Apply one Adam step to ``variable`` with the fused TensorFlow op."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


@keras.saving.register_keras_serializable(package="glacier_mapping")
class GlacierIoU(keras.metrics.Metric):
    """Glacier-class IoU, TP / (TP + FP + FN), of argmax predictions pooled over batches.

    Targets may be one-hot or label-smoothed; pixels whose target has no dominant class
    (e.g. all-zero padding, also after label smoothing) are ignored. When no pixel is glacier
    in either the target or the prediction the result is 0.

    Args:
        name: Metric name; Keras prefixes the head name (``output_glacier_iou``).
        **kwargs: Passed to :class:`keras.metrics.Metric`.
    """

    def __init__(self, name: str = GLACIER_IOU_NAME, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.false_positives = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.false_negatives = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Accumulate the confusion counts of a batch (``sample_weight`` is not supported)."""
        if sample_weight is not None:
            raise ValueError("GlacierIoU does not support sample_weight; pass None.")
        y_true = ops.cast(y_true, "float32")
        top_two = ops.top_k(y_true, k=2).values
        valid = ops.cast(top_two[..., 0] > top_two[..., 1], "float32")
        truth = ops.cast(ops.equal(ops.argmax(y_true, axis=-1), GLACIER_CLASS), "float32")
        predicted = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), GLACIER_CLASS), "float32")
        self.true_positives.assign_add(ops.sum(valid * truth * predicted))
        self.false_positives.assign_add(ops.sum(valid * (1.0 - truth) * predicted))
        self.false_negatives.assign_add(ops.sum(valid * truth * (1.0 - predicted)))

    def result(self) -> Any:
        """Return the pooled IoU (0 when the denominator is empty)."""
        union = self.true_positives + self.false_positives + self.false_negatives
        return ops.divide_no_nan(self.true_positives, union)

    def reset_state(self) -> None:
        """Zero the accumulated counts."""
        for variable in (self.true_positives, self.false_positives, self.false_negatives):
            variable.assign(0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (defaults: the original global GlaViTU run).

    Attributes:
        epochs: Total epochs (the original runs 150).
        steps_per_epoch: Batches per epoch (original: 4 x non-overlapping patches / 8).
        validation_steps: Validation batches per epoch; None uses the whole validation set.
        learning_rate: Peak learning rate of every cosine cycle.
        restart_epochs: Cumulative epochs at which cosine cycles end (warm restarts).
        min_learning_rate_fraction: Rate at the end of a cycle as a fraction of the peak.
        loss_weights: Weight of each head's focal loss; heads the model lacks are skipped.
        focal_gamma: Focusing parameter of the focal loss.
        seed: Seed for Keras, NumPy, Python and TensorFlow random generators.
        monitor: Logged quantity that selects the best checkpoint.
        mode: ``"max"`` or ``"min"``: whether a larger monitor value is better.
        init_weights: Finetuning: a ``.keras`` or ``.weights.h5`` file whose weights
            initialise the model before the first epoch (its optimizer state is not used;
            ignored when resuming).
        jit_compile: Compile train steps with XLA. Off by default: on a 2-core CPU, GlaViTU
            (small preset, 64 px) took 0.87 s per step with XLA, 0.47 s without.
        batchnorm_momentum: Momentum of every BatchNormalization layer's moving statistics
            during this run; None keeps the model's (Keras and the original: 0.99). Runs of a
            few hundred steps need a faster average (e.g. 0.9): with 0.99 the moving
            statistics lag the weights, and validation in inference mode scored DeepLabv3+
            0.41 glacier IoU after 200 steps against 0.56 with 0.9 (quick profile, seed 42).
        run_eagerly: Run train steps eagerly (validation always runs the compiled inference
            function, which the chapters' predictions trace anyway). Tracing a GlaViTU train
            step takes 5-10 s on a 2-core CPU, so runs of a few dozen steps (the smoke profile)
            are faster without it; the arithmetic is the same.
    """

    epochs: int = 150
    steps_per_epoch: int = 100
    validation_steps: int | None = None
    learning_rate: float = DEFAULT_LEARNING_RATE
    restart_epochs: tuple[int, ...] = (10, 30, 70, 150)
    min_learning_rate_fraction: float = 0.0
    loss_weights: Mapping[str, float] = field(
        default_factory=lambda: {OUTPUT_HEAD: 1.0, DEEP_SUPERVISION_HEAD: 0.5}
    )
    focal_gamma: float = 2.0
    seed: int = 0
    monitor: str = f"val_{OUTPUT_HEAD}_{GLACIER_IOU_NAME}"
    mode: str = "max"
    init_weights: str | None = None
    jit_compile: bool = False
    batchnorm_momentum: float | None = None
    run_eagerly: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "restart_epochs", tuple(int(e) for e in self.restart_epochs))
        object.__setattr__(self, "loss_weights", dict(self.loss_weights))
        if self.init_weights is not None:
            object.__setattr__(self, "init_weights", str(self.init_weights))
        for name in ("epochs", "steps_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.validation_steps is not None and self.validation_steps < 1:
            raise ValueError(
                f"TrainConfig.validation_steps must be None or >= 1, got {self.validation_steps}."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}.")
        _check_restarts(self.restart_epochs, "TrainConfig.restart_epochs")
        if self.batchnorm_momentum is not None and not 0.0 < self.batchnorm_momentum < 1.0:
            raise ValueError(
                "TrainConfig.batchnorm_momentum must be None or in (0, 1), got "
                f"{self.batchnorm_momentum}."
            )
        if self.mode not in ("max", "min"):
            raise ValueError(f"TrainConfig.mode must be 'max' or 'min', got {self.mode!r}.")
        if OUTPUT_HEAD not in self.loss_weights:
            raise ValueError(
                f"TrainConfig.loss_weights needs an {OUTPUT_HEAD!r} entry, got {self.loss_weights}."
            )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-compatible builtins."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def finetune_config(
    base: TrainConfig, epochs: int = 80, init_weights: str | Path | None = None
) -> TrainConfig:
    """Derive the finetuning schedule: lr 5e-5 cosine to 0 over one cycle, best val loss.

    Args:
        base: Configuration of the global run (steps, seed, loss weights are kept).
        epochs: Finetuning epochs (80 in the original).
        init_weights: Weights of the global model to start from (``.keras``/``.weights.h5``).
    """
    return dataclasses.replace(
        base,
        epochs=epochs,
        learning_rate=FINETUNE_LEARNING_RATE,
        restart_epochs=(epochs,),
        min_learning_rate_fraction=0.0,
        monitor="val_loss",
        mode="min",
        init_weights=init_weights,
    )


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        best_model_path: The model with the best monitored value (Keras native).
        last_checkpoint_path: Model and optimizer variables after the last completed epoch
            (``.npz``; :func:`restore_checkpoint` loads them into a compiled model).
        history: One row per epoch: ``epoch`` (1-based), Keras logs, ``learning_rate`` (at
            the start of the epoch), ``seconds``.
        best_epoch: 1-based epoch of the best checkpoint.
        best_value: Monitored value of the best checkpoint.
        train_seconds: Wall seconds of all epochs, summed over interrupted sessions.
        epochs_run: Completed epochs.
    """

    best_model_path: Path
    last_checkpoint_path: Path
    history: pd.DataFrame
    best_epoch: int
    best_value: float
    train_seconds: float
    epochs_run: int


def train_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    config: TrainConfig,
    out_dir: str | Path,
    verbose: bool = True,
) -> TrainResult:
    """Compile and fit ``model``, checkpointing so that an interrupted run can resume.

    Files in ``out_dir``: ``last-epochNNNN.npz`` (every model and optimizer variable after the
    latest epoch), ``best.npz`` (the same at the best monitor value), ``history.csv`` and
    ``state.json`` (the commit point, written last each epoch), and once training is complete
    ``best.keras``, the best model in Keras format. (A Keras save takes about a second for
    GlaViTU; the variables alone a few milliseconds.) A rerun with the same configuration
    continues after the last completed epoch (the optimizer step, hence the learning-rate
    position, is restored); a completed run returns at once. After a resume the dataset iterator
    starts afresh, so the data order matches an uninterrupted run only if every epoch covers
    whole passes of ``train_ds``. On return, ``model`` holds the best weights. To train on
    several devices, build ``model`` inside a ``tf.distribute`` strategy's ``scope()`` (see
    :mod:`glacier_mapping.distribute`): it is compiled and fitted under that strategy, and the
    datasets' batch is the global batch, split over the replicas.

    Args:
        model: Keras model with dict inputs and dict outputs ``{"output", "deepsupervision"?}``.
        train_ds: Repeating dataset of ``(inputs, {"output": y, "deepsupervision": y})``.
        val_ds: Validation dataset of the same structure, or None (then monitor ``loss``).
        config: Hyperparameters.
        out_dir: Directory of this run's files.
        verbose: Print one short line per epoch.

    Raises:
        ValueError: For a model without an ``"output"`` head, a monitor that needs missing
            validation data, or an ``out_dir`` holding a run with a different configuration.
    """
    out_dir = Path(out_dir)
    heads = _output_heads(model)
    if config.monitor.startswith("val_") and val_ds is None:
        raise ValueError(
            f"TrainConfig.monitor={config.monitor!r} needs validation data; pass val_ds or "
            "set monitor='loss'."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(out_dir, config)
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    _set_batchnorm_momentum(model, config.batchnorm_momentum)
    with model.distribute_strategy.scope():  # the strategy the model was built under
        if not _reuse_compiled(model, heads, config):
            _compile(model, heads, config)
        if state["completed"]:
            return _finish(model, out_dir, state)
        if state["epoch"] > 0:
            restore_checkpoint(model, out_dir / state["last_model"])
        elif config.init_weights is not None:
            _load_initial_weights(model, config.init_weights)

        validation = None if val_ds is None else _Validation(
            model, _select_targets(val_ds, heads), heads, config
        )
        tracker = _RunTracker(out_dir, config, state, verbose, validation)
        with _graph_rewrites(enabled=False):
            model.fit(
                _select_targets(train_ds, heads),
                epochs=config.epochs,
                initial_epoch=state["epoch"],
                steps_per_epoch=config.steps_per_epoch,
                callbacks=[tracker],
                shuffle=False,
                verbose=0,
            )
        if tracker.state["epoch"] < config.epochs:
            raise RuntimeError(
                f"Training in {out_dir} stopped after epoch {tracker.state['epoch']} of "
                f"{config.epochs} (did train_ds run out of data? It must repeat); rerun to resume."
            )
        # When the last epoch was the best, the model already holds the best weights.
        best_in_memory = tracker.state["best_epoch"] == tracker.state["epoch"]
        return _finish(model, out_dir, tracker.state, best_in_memory)


class _RunTracker(keras.callbacks.Callback):
    """Per-epoch bookkeeping: best and last checkpoints, history, state, a progress line."""

    def __init__(
        self,
        out_dir: Path,
        config: TrainConfig,
        state: dict[str, Any],
        verbose: bool,
        validation: _Validation | None,
    ) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.config = config
        self.state = state
        self.verbose = verbose
        self.validation = validation
        self.schedule = CosineRestarts(
            config.learning_rate,
            config.restart_epochs,
            config.steps_per_epoch,
            config.min_learning_rate_fraction,
        )
        self.history = _read_history(out_dir).iloc[: state["epoch"]]
        self.started = 0.0
        self.learning_rate = 0.0
        self.epoch = 0
        self.batches = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        self.epoch = epoch
        self.learning_rate = self._rate(0)
        self.batches = 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # The schedule is applied here rather than in the traced step, which then does not
        # depend on it: finetuning (another schedule) reuses the regional models' step.
        self.model.optimizer.learning_rate = self._rate(batch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1

    def _rate(self, batch: int) -> float:
        """Learning rate of ``batch`` of the current epoch (the schedule at that step)."""
        step = self.epoch * self.config.steps_per_epoch + batch
        return float(ops.convert_to_numpy(self.schedule(step)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.batches < self.config.steps_per_epoch:  # data ran out: do not commit
            self.model.stop_training = True
            return
        logs = {name: float(value) for name, value in (logs or {}).items()}
        if self.validation is not None:
            logs.update(self.validation())
        seconds = time.perf_counter() - self.started
        if self.config.monitor not in logs:
            raise ValueError(
                f"TrainConfig.monitor={self.config.monitor!r} is not logged; available: "
                f"{sorted(logs)}."
            )
        completed = epoch + 1
        value = logs[self.config.monitor]
        improved = self.state["best_epoch"] == 0 or _better(
            value, self.state["best_value"], self.config.mode
        )
        row = {
            "epoch": completed,
            **logs,
            "learning_rate": self.learning_rate,
            "seconds": seconds,
        }
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)

        last_model = f"last-epoch{completed:04d}.npz"
        _save_checkpoint(self.model, self.out_dir / last_model)
        if improved:
            atomic_copy(self.out_dir / last_model, self.out_dir / BEST_CHECKPOINT_FILE)
        atomic_write_text(self.out_dir / HISTORY_FILE, self.history.to_csv(index=False))
        previous_last = self.state["last_model"]
        self.state = {
            **self.state,
            "epoch": completed,
            "completed": completed >= self.config.epochs,
            "last_model": last_model,
            "best_epoch": completed if improved else self.state["best_epoch"],
            "best_value": value if improved else self.state["best_value"],
            "train_seconds": self.state["train_seconds"] + seconds,
        }
        atomic_write_text(self.out_dir / STATE_FILE, json.dumps(self.state, indent=2))
        if previous_last and previous_last != last_model:
            (self.out_dir / previous_last).unlink(missing_ok=True)
        if self.verbose:
            print(
                _progress_line(completed, self.config, logs, self.learning_rate, seconds, improved)
            )


#: Validation patches per model call: more per call than the training batch runs faster
#: (GlaViTU ``small``, 64 px, 2-core CPU: 24 batches of 8 took 1.42 s per epoch through Keras,
#: 1.16 s in batches of 32) and does not change the pooled loss or IoU.
VALIDATION_BATCH = 32


class _Validation:
    """Validation loss and glacier IoU of a model in inference mode, pooled over a dataset.

    Runs the model's compiled inference function (:func:`glacier_mapping.inference.
    predict_heads`) rather than a Keras test step: the chapters' predictions need that function
    anyway, so a build traces once instead of twice (a Keras validation step took about 7 s to
    trace for GlaViTU ``small`` on a 2-core CPU). The loss is each head's focal loss averaged
    over all validation pixels, weighted as in training (``val_<head>_loss`` when there are
    several heads, and their weighted sum ``val_loss``); the IoU is :class:`GlacierIoU` of the
    output head (``val_output_glacier_iou``).
    """

    def __init__(
        self, model: keras.Model, dataset: tf.data.Dataset, heads: tuple[str, ...],
        config: TrainConfig,
    ) -> None:
        if config.validation_steps is not None:
            dataset = dataset.take(config.validation_steps)
        self.dataset = dataset.rebatch(VALIDATION_BATCH)
        self.model = model
        self.heads = heads
        self.config = config
        self.focal = FocalLoss(gamma=config.focal_gamma)
        self.iou = GlacierIoU()

    def __call__(self) -> dict[str, float]:
        """Evaluate the model on the whole validation dataset."""
        focal, iou = self.focal, self.iou
        iou.reset_state()
        loss_sums = dict.fromkeys(self.heads, 0.0)
        pixels = 0
        with _graph_rewrites(enabled=True):  # the inference function keeps Grappler
            for inputs, targets in self.dataset.as_numpy_iterator():
                probabilities = predict_heads(self.model, inputs)
                for head in self.heads:
                    per_pixel = focal.call(targets[head], probabilities[head])
                    loss_sums[head] += float(np.sum(ops.convert_to_numpy(per_pixel),
                                                    dtype=np.float64))
                iou.update_state(targets[OUTPUT_HEAD], probabilities[OUTPUT_HEAD])
                pixels += int(np.prod(targets[OUTPUT_HEAD].shape[:-1]))
        if pixels == 0:
            raise ValueError("The validation dataset is empty; pass val_ds with data or None.")
        losses = {head: loss_sums[head] / pixels for head in self.heads}
        logs = {"val_loss": sum(
            float(self.config.loss_weights.get(head, 0.0)) * losses[head] for head in self.heads
        )}
        if len(self.heads) > 1:
            logs.update({f"val_{head}_loss": losses[head] for head in self.heads})
        logs[f"val_{OUTPUT_HEAD}_{GLACIER_IOU_NAME}"] = float(ops.convert_to_numpy(iou.result()))
        return logs


def _progress_line(
    epoch: int,
    config: TrainConfig,
    logs: dict[str, float],
    learning_rate: float,
    seconds: float,
    improved: bool,
) -> str:
    """Format one short progress line."""
    shown = [name for name in ("loss", "val_loss", config.monitor) if name in logs]
    values = "  ".join(f"{name} {logs[name]:.4f}" for name in dict.fromkeys(shown))
    marker = "  *best" if improved else ""
    return (
        f"epoch {epoch}/{config.epochs}  {values}  lr {learning_rate:.2e}  {seconds:.1f} s{marker}"
    )


def _output_heads(model: keras.Model) -> tuple[str, ...]:
    """Return the model's output heads used for training, checking the output contract."""
    outputs = getattr(model, "output", None)
    if not isinstance(outputs, dict) or OUTPUT_HEAD not in outputs:
        raise ValueError(
            f"The model must return a dict with an {OUTPUT_HEAD!r} entry (optionally "
            f"{DEEP_SUPERVISION_HEAD!r}); got {type(outputs).__name__}."
        )
    return tuple(head for head in (OUTPUT_HEAD, DEEP_SUPERVISION_HEAD) if head in outputs)


def _set_batchnorm_momentum(model: keras.Model, momentum: float | None) -> None:
    """Set the moving-statistics momentum of every BatchNormalization layer (None: keep)."""
    if momentum is None:
        return
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)


def _compile(model: keras.Model, heads: tuple[str, ...], config: TrainConfig) -> None:
    """Compile with Adam, focal loss per head and glacier IoU.

    The learning rate is a variable that :class:`_RunTracker` sets before every step from the
    run's :class:`CosineRestarts` schedule.
    """
    iou_name = GLACIER_IOU_NAME if len(heads) > 1 else f"{OUTPUT_HEAD}_{GLACIER_IOU_NAME}"
    model.compile(
        optimizer=FusedAdam(learning_rate=config.learning_rate),
        loss={head: FocalLoss(gamma=config.focal_gamma) for head in heads},
        loss_weights={head: float(config.loss_weights.get(head, 0.0)) for head in heads},
        # Keras prefixes metric names with the head only when there are several heads.
        metrics={OUTPUT_HEAD: [GlacierIoU(name=iou_name)]},
        jit_compile=config.jit_compile,
        run_eagerly=config.run_eagerly,
    )
    # Built now, the optimizer's slots exist before the first step, so Keras traces the
    # train step once instead of twice (once to create variables, once to run).
    model.optimizer.build(model.trainable_variables)
    setattr(model, _COMPILED_FOR, _compile_key(heads, config))


@contextlib.contextmanager
def _graph_rewrites(enabled: bool) -> Iterator[None]:
    """Instantiate the functions first run inside with or without TensorFlow's graph optimiser.

    Grappler rewrites a graph when it is first run. Measured for GlaViTU ``small`` on 64 px
    patches on a 2-core CPU with oneDNN: with Grappler the first train step of a fit took 16 s
    (4.5 s when the step was already traced) and later steps 0.27 s; without it 12.9 s (2.7 s)
    and 0.22 s. Train steps therefore run without it; inference (also validation, which uses
    the inference function) keeps it, as measured in ``benchmarks/``.
    """
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(
        {**previous, "disable_meta_optimizer": not enabled}
    )
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {**previous, "disable_meta_optimizer": previous.get("disable_meta_optimizer", False)}
        )


def _compile_key(heads: tuple[str, ...], config: TrainConfig) -> str:
    """What the traced train step depends on: heads, loss, momentum (not the schedule)."""
    settings = config.to_json_dict()
    for name in ("epochs", "seed", "init_weights", "monitor", "mode", "validation_steps",
                 "learning_rate", "restart_epochs", "min_learning_rate_fraction",
                 "steps_per_epoch"):
        settings.pop(name)
    return json.dumps({"heads": heads, **settings}, sort_keys=True)


def _reuse_compiled(model: keras.Model, heads: tuple[str, ...], config: TrainConfig) -> bool:
    """Keep the compiled (already traced) steps of a model trained before with this setup.

    Keras traces a model's train step once per compilation (about 10 s for GlaViTU on a
    2-core CPU), so a model trained again, e.g. with other initial weights for another seed
    or finetuned with another schedule, skips that when nothing the step depends on changed.
    Its optimizer restarts (moments and step counter at zero, hence the schedule at its start).
    """
    if getattr(model, _COMPILED_FOR, None) != _compile_key(heads, config):
        return False
    _reset_optimizer(model)
    return True


def _reset_optimizer(model: keras.Model) -> None:
    """Zero the optimizer's moments and step counter."""
    for variable in model.optimizer.variables:
        variable.assign(ops.zeros_like(variable))


def _select_targets(dataset: tf.data.Dataset, heads: tuple[str, ...]) -> tf.data.Dataset:
    """Drop target entries for heads the model does not have."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict)):
        raise ValueError(
            f"Datasets must yield (inputs dict, targets dict) pairs; got element_spec {spec}."
        )
    missing = [head for head in heads if head not in spec[1]]
    if missing:
        raise ValueError(f"The dataset targets lack {missing}; they have {sorted(spec[1])}.")
    if set(spec[1]) == set(heads):
        return dataset
    return dataset.map(lambda inputs, targets: (inputs, {h: targets[h] for h in heads}))


def _load_initial_weights(model: keras.Model, path: str) -> None:
    """Load finetuning start weights (not optimizer state), with clear errors."""
    if not Path(path).is_file():
        raise ValueError(f"TrainConfig.init_weights={path!r} does not exist.")
    try:
        with warnings.catch_warnings():
            # A weights-only file has no optimizer state; Keras warns that it skips it.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"Cannot load TrainConfig.init_weights={path!r} into this model: {error}. The file "
            "must come from a model of the same architecture and inputs."
        ) from error
    # A .keras file also carries its optimizer's state; finetuning starts afresh (Adam's
    # moments and step counter at zero, hence the learning-rate schedule at its start).
    _reset_optimizer(model)


def _fresh_state() -> dict[str, Any]:
    """Return the state of a run that has not completed any epoch."""
    return {
        "epoch": 0,
        "completed": False,
        "last_model": "",
        "best_epoch": 0,
        "best_value": None,
        "train_seconds": 0.0,
    }


def _read_state(out_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """Read ``state.json`` (or start fresh), refusing a run with another configuration."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        return {**_fresh_state(), "config": config.to_json_dict()}
    state = json.loads(path.read_text())
    if state.get("config") != config.to_json_dict():
        raise ValueError(
            f"{out_dir} holds a training run with a different configuration "
            f"({state.get('config')}); use another out_dir or delete that one to start over."
        )
    return state


def _read_history(out_dir: Path) -> pd.DataFrame:
    """Read ``history.csv`` or return an empty frame."""
    path = out_dir / HISTORY_FILE
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _finish(
    model: keras.Model, out_dir: Path, state: dict[str, Any], best_in_memory: bool = False
) -> TrainResult:
    """Give ``model`` the best weights, save them as ``best.keras`` once, describe the run."""
    best = out_dir / BEST_MODEL_FILE
    if best.is_file():
        if not best_in_memory:
            model.load_weights(best)
    else:  # the run has just completed (or was interrupted right after its last epoch)
        if not best_in_memory:
            restore_checkpoint(model, out_dir / BEST_CHECKPOINT_FILE)
        _save_model_atomic(model, best)
    return TrainResult(
        best_model_path=best,
        last_checkpoint_path=out_dir / state["last_model"],
        history=_read_history(out_dir).iloc[: state["epoch"]].reset_index(drop=True),
        best_epoch=int(state["best_epoch"]),
        best_value=float(state["best_value"]),
        train_seconds=float(state["train_seconds"]),
        epochs_run=int(state["epoch"]),
    )


def _better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` (NaN never improves)."""
    if np.isnan(value):
        return False
    if best is None or np.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def _check_restarts(restarts: tuple[int, ...], name: str) -> None:
    """Check that restart epochs are positive and strictly increasing."""
    if not restarts or restarts[0] < 1 or any(b <= a for a, b in pairwise(restarts)):
        raise ValueError(
            f"{name} must be a non-empty, strictly increasing sequence of positive epochs, "
            f"got {restarts}."
        )


def _checkpoint_variables(model: keras.Model) -> list[Any]:
    """The variables a checkpoint holds: the model's, then its optimizer's."""
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "The model must be compiled, with its optimizer built, to save or restore a "
            "checkpoint (train_model does both)."
        )
    return [*model.variables, *model.optimizer.variables]


def _save_checkpoint(model: keras.Model, path: Path) -> None:
    """Write every model and optimizer variable to ``path`` (``.npz``) atomically."""
    values = {f"v{index:05d}": ops.convert_to_numpy(variable)
              for index, variable in enumerate(_checkpoint_variables(model))}

    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **values)


def restore_checkpoint(model: keras.Model, path: Path) -> None:
    """Load a checkpoint of :func:`_save_checkpoint` into the (compiled) ``model``."""
    variables = _checkpoint_variables(model)
    with np.load(path, allow_pickle=False) as stored:
        arrays = [stored[name] for name in sorted(stored.files)]  # each read once
    if [array.shape for array in arrays] != [tuple(variable.shape) for variable in variables]:
        raise ValueError(
            f"Checkpoint {path} holds {len(arrays)} variables that do not match this model "
            f"and optimizer ({len(variables)} variables); delete {path.parent} to start over."
        )
    for array, variable in zip(arrays, variables, strict=True):
        variable.assign(array)


def _save_model_atomic(model: keras.Model, path: Path) -> None:
    """Save a Keras native model atomically (:func:`glacier_mapping.store.atomic_path`)."""
    with atomic_path(path) as temporary:
        model.save(temporary)
