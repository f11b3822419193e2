"""Tests of glacier_mapping.training with a tiny functional Keras model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses
import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from keras import layers

from glacier_mapping import inference
from glacier_mapping.experiments.runner import _training_model
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.training import (
    CosineRestarts,
    FocalLoss,
    FusedAdam,
    GlacierIoU,
    TrainConfig,
    finetune_config,
    restore_checkpoint,
    train_model,
)


def tiny_model(deep_supervision: bool = True) -> keras.Model:
    keras.utils.set_random_seed(11)
    inputs = {
        "optical": keras.Input((8, 8, 3), name="optical"),
        "dem": keras.Input((8, 8, 2), name="dem"),
    }
    features = layers.Concatenate()([inputs["optical"], inputs["dem"]])
    hidden = layers.Conv2D(4, 3, padding="same", activation="relu")(features)
    outputs = {"output": layers.Conv2D(2, 1, activation="softmax")(hidden)}
    if deep_supervision:
        outputs["deepsupervision"] = layers.Conv2D(2, 1, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def dataset(count: int = 8, batch: int = 4) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    optical = rng.random((count, 8, 8, 3)).astype("float32")
    dem = rng.random((count, 8, 8, 2)).astype("float32")
    labels = (optical[..., 0] + dem[..., 0] > 1.0).astype("int64")
    smoothed = np.eye(2, dtype="float32")[labels] * 0.9 + 0.05
    return tf.data.Dataset.from_tensor_slices(
        ({"optical": optical, "dem": dem}, {"output": smoothed, "deepsupervision": smoothed})
    ).batch(batch)


CONFIG = TrainConfig(epochs=3, steps_per_epoch=2, learning_rate=1e-2, restart_epochs=(1, 3))


def _adam_steps(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    keras.utils.set_random_seed(3)
    weights = [keras.Variable(np.linspace(-1.0, 1.0, 6).reshape(2, 3).astype("float32")),
               keras.Variable(np.array([0.5, -0.25], "float32"))]
    optimizer.build(weights)
    rng = np.random.default_rng(5)

    @tf.function
    def step(grads: list[tf.Tensor]) -> None:
        optimizer.apply_gradients(zip(grads, weights, strict=True))

    for _ in range(4):
        step([tf.constant(rng.normal(size=w.shape).astype("float32")) for w in weights])
    return [w.numpy() for w in weights]


def test_fused_adam_matches_keras_adam():
    expected = _adam_steps(keras.optimizers.Adam(learning_rate=0.1))
    fused = _adam_steps(FusedAdam(learning_rate=0.1))
    for want, got in zip(expected, fused, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # steps are ~0.1
    assert not np.allclose(expected[0], np.linspace(-1.0, 1.0, 6).reshape(2, 3))  # it moved
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)


def test_focal_loss_by_hand_and_reduces_to_cross_entropy():
    y_true = np.array([[0.95, 0.05], [0.05, 0.95]], "float32")
    y_pred = np.array([[0.8, 0.2], [0.4, 0.6]], "float32")
    expected = -np.sum(y_true * (1 - y_pred) ** 2 * np.log(y_pred), axis=-1).mean()
    assert float(FocalLoss()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    cross_entropy = keras.losses.CategoricalCrossentropy()(y_true, y_pred)
    assert float(FocalLoss(gamma=0.0)(y_true, y_pred)) == pytest.approx(
        float(cross_entropy), rel=1e-5
    )
    restored = FocalLoss.from_config(FocalLoss(gamma=3.0).get_config())
    assert restored.gamma == 3.0
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)


def test_cosine_restarts_schedule():
    schedule = CosineRestarts(5e-4, (10, 30, 70, 150), steps_per_epoch=4)

    def at(epoch: float) -> float:
        return float(schedule(int(round(epoch * 4))))

    assert at(0) == pytest.approx(5e-4)
    assert at(5) == pytest.approx(2.5e-4)
    assert at(9.75) < 1e-5
    assert at(10) == pytest.approx(5e-4)  # warm restart
    assert at(20) == pytest.approx(2.5e-4)  # middle of the 20-epoch cycle
    assert at(30) == pytest.approx(5e-4)
    assert at(110) == pytest.approx(2.5e-4)
    assert at(150) == pytest.approx(0.0, abs=1e-12)
    assert at(200) == pytest.approx(0.0, abs=1e-12)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    restored = keras.saving.deserialize_keras_object(config)
    assert float(restored(84)) == pytest.approx(float(schedule(84)))
    with pytest.raises(ValueError, match="strictly increasing"):
        CosineRestarts(1e-3, (10, 5), steps_per_epoch=1)


def test_glacier_iou_ignores_undecided_pixels():
    metric = GlacierIoU()
    y_true = np.eye(2, dtype="float32")[[1, 1, 0, 0, 1]] * 0.9 + 0.05
    y_true[4] = 0.05  # padding after label smoothing
    y_pred = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.0, 1.0]], "float32")
    metric.update_state(y_true[None], y_pred[None])
    assert float(metric.result()) == pytest.approx(1 / 3)  # tp 1, fn 1, fp 1
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_config_validation_and_finetune_config():
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="best")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        TrainConfig(steps_per_epoch=0)
    tuned = finetune_config(TrainConfig(seed=4), epochs=80, init_weights="global.keras")
    assert (tuned.epochs, tuned.learning_rate, tuned.restart_epochs) == (80, 5e-5, (80,))
    assert (tuned.monitor, tuned.mode, tuned.seed) == ("val_loss", "min", 4)
    assert tuned.init_weights == "global.keras"
    assert TrainConfig().loss_weights == {"output": 1.0, "deepsupervision": 0.5}


def test_train_writes_checkpoints_and_history(tmp_path, capsys):
    model = tiny_model()
    result = train_model(model, dataset().repeat(), dataset(), CONFIG, tmp_path / "run")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3")
    assert result.epochs_run == 3 and len(result.history) == 3
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"loss", "output_loss", "deepsupervision_loss", "val_output_glacier_iou"} <= set(
        history.columns
    )
    np.testing.assert_allclose(history["learning_rate"], [1e-2, 1e-2, 5e-3], rtol=1e-6)
    best_row = history["val_output_glacier_iou"].idxmax()
    assert result.best_epoch == history.loc[best_row, "epoch"]
    assert result.best_value == pytest.approx(history.loc[best_row, "val_output_glacier_iou"])
    assert result.train_seconds > 0
    files = sorted(path.name for path in (tmp_path / "run").iterdir())
    assert files == ["best.keras", "best.npz", "history.csv", "last-epoch0003.npz", "state.json"]
    best = keras.models.load_model(result.best_model_path)
    for loaded, trained in zip(best.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, trained)


def test_validation_equals_keras_evaluate_on_the_same_weights(tmp_path):
    """The validation logs (inference function, NumPy loss and IoU) are Keras's numbers."""
    model = tiny_model()
    result = train_model(model, dataset().repeat(), dataset(count=12), CONFIG, tmp_path, False)
    model.compile(
        loss={"output": FocalLoss(), "deepsupervision": FocalLoss()},
        loss_weights={"output": 1.0, "deepsupervision": 0.5},
        metrics={"output": [GlacierIoU()]},
    )
    # The last batch (4 of 12, rebatched to 32) is one call; Keras sees batches of 4.
    keras_logs = model.evaluate(dataset(count=12), return_dict=True, verbose=0)
    history = result.history
    ours = history[history["epoch"] == result.best_epoch].iloc[0]  # the weights model holds
    assert ours["val_loss"] == pytest.approx(keras_logs["loss"], rel=1e-5)
    assert ours["val_output_loss"] == pytest.approx(keras_logs["output_loss"], rel=1e-5)
    assert ours["val_deepsupervision_loss"] == pytest.approx(
        keras_logs["deepsupervision_loss"], rel=1e-5)
    assert ours["val_output_glacier_iou"] == pytest.approx(
        keras_logs["output_glacier_iou"], rel=1e-6)
    assert 0.0 < ours["val_output_glacier_iou"] < 1.0


def _batchnorm_model() -> keras.Model:
    keras.utils.set_random_seed(4)
    inputs = {"optical": keras.Input((8, 8, 3), name="optical"),
              "dem": keras.Input((8, 8, 2), name="dem")}
    features = layers.Concatenate()([inputs["optical"], inputs["dem"]])
    hidden = layers.BatchNormalization(name="bn")(layers.Conv2D(4, 3, padding="same")(features))
    return keras.Model(inputs, {"output": layers.Conv2D(2, 1, activation="softmax")(hidden)})


def test_batchnorm_momentum_speeds_up_moving_statistics(tmp_path):
    config = TrainConfig(epochs=1, steps_per_epoch=4, restart_epochs=(1,), monitor="loss",
                         mode="min")
    moved = {}
    for momentum in (None, 0.5):
        model = _batchnorm_model()
        run = dataclasses.replace(config, batchnorm_momentum=momentum)
        train_model(model, dataset().repeat(), None, run, tmp_path / str(momentum),
                    verbose=False)
        layer = model.get_layer("bn")
        assert layer.momentum == (0.99 if momentum is None else 0.5)
        moved[momentum] = float(np.abs(layer.moving_variance.numpy() - 1.0).max())
    # Four steps barely move a 0.99 average; a 0.5 average follows the batch statistics.
    assert moved[0.5] > 10 * moved[None]
    with pytest.raises(ValueError, match="batchnorm_momentum"):
        TrainConfig(batchnorm_momentum=1.5)


def test_completed_run_returns_from_files(tmp_path):
    first = train_model(tiny_model(), dataset().repeat(), dataset(), CONFIG, tmp_path, False)
    stamp = (tmp_path / "best.keras").stat().st_mtime_ns
    model = tiny_model()
    again = train_model(model, dataset().repeat(), dataset(), CONFIG, tmp_path, False)
    assert (tmp_path / "best.keras").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.history, first.history)
    assert again.train_seconds == first.train_seconds
    best = keras.models.load_model(first.best_model_path)
    np.testing.assert_array_equal(model.get_weights()[0], best.get_weights()[0])
    with pytest.raises(ValueError, match="different configuration"):
        other = TrainConfig(epochs=4, steps_per_epoch=2, restart_epochs=(1, 3))
        train_model(tiny_model(), dataset().repeat(), dataset(), other, tmp_path, False)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    reference = train_model(
        tiny_model(), dataset().repeat(), dataset(), CONFIG, tmp_path / "a", False
    )
    # Data for two epochs and one batch: epoch 3 is interrupted and must not be committed.
    short = dataset().repeat(2).concatenate(dataset().take(1))
    with pytest.raises(RuntimeError, match="stopped after epoch 2"):
        train_model(tiny_model(), short, dataset(), CONFIG, tmp_path / "b", False)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 2 and not state["completed"]
    model = tiny_model()
    resumed = train_model(model, dataset().repeat(), dataset(), CONFIG, tmp_path / "b", False)
    assert resumed.epochs_run == 3
    columns = ["loss", "val_loss", "val_output_glacier_iou", "learning_rate"]
    np.testing.assert_allclose(resumed.history[columns], reference.history[columns], rtol=1e-6)
    # Weights and optimizer moments came back exactly: the result equals the uninterrupted one.
    best = keras.models.load_model(reference.best_model_path)
    for resumed_weights, reference_weights in zip(
        model.get_weights(), best.get_weights(), strict=True
    ):
        np.testing.assert_allclose(resumed_weights, reference_weights, rtol=1e-5, atol=1e-7)
    restore_checkpoint(model, resumed.last_checkpoint_path)
    assert int(model.optimizer.iterations) == 3 * CONFIG.steps_per_epoch
    with pytest.raises(ValueError, match="must be compiled"):
        restore_checkpoint(tiny_model(), resumed.last_checkpoint_path)
    other = tiny_model(False)
    other.compile(optimizer="adam")
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(ValueError, match="do not match this model"):
        restore_checkpoint(other, resumed.last_checkpoint_path)


def test_single_head_model_and_finetuning_from_weights(tmp_path):
    base = train_model(
        tiny_model(False), dataset().repeat(), dataset(), CONFIG, tmp_path / "global", False
    )
    assert "output_glacier_iou" in base.history.columns
    tuned_config = finetune_config(CONFIG, epochs=2, init_weights=base.best_model_path)
    model = tiny_model(False)
    tuned = train_model(
        model, dataset().repeat(), dataset(), tuned_config, tmp_path / "tuned", False
    )
    assert tuned.epochs_run == 2
    assert tuned.best_value == pytest.approx(tuned.history["val_loss"].min())
    assert tuned.history["learning_rate"].iloc[0] == pytest.approx(5e-5)
    # Finetuning started from the global weights, so its first loss is near the global one.
    assert tuned.history["loss"].iloc[0] < base.history["loss"].iloc[0]
    bad = finetune_config(CONFIG, epochs=2, init_weights=tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="does not exist"):
        train_model(tiny_model(False), dataset().repeat(), dataset(), bad, tmp_path / "bad", False)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="needs validation data"):
        train_model(tiny_model(), dataset().repeat(), None, CONFIG, tmp_path, False)
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, layers.Conv2D(2, 1, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="must return a dict"):
        train_model(plain, dataset().repeat(), dataset(), CONFIG, tmp_path, False)


def _dropout_model(seed: int) -> keras.Model:
    """A model whose training uses every kind of state: weights, BatchNorm, dropout seeds."""
    keras.utils.set_random_seed(seed)
    inputs = {"optical": keras.Input((8, 8, 3), name="optical"),
              "dem": keras.Input((8, 8, 2), name="dem")}
    features = layers.Concatenate()([inputs["optical"], inputs["dem"]])
    hidden = layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(features))
    hidden = layers.Dropout(0.3)(layers.Activation("relu")(hidden))
    heads = ("output", "deepsupervision")
    return keras.Model(inputs, {head: layers.Conv2D(2, 1, activation="softmax")(hidden)
                                for head in heads})


def test_a_model_trained_again_reuses_its_steps_and_matches_a_fresh_model(tmp_path):
    spec = ExperimentSpec(name="reuse", patch_size=8, seed=3)  # a build key no other test uses
    config = dataclasses.replace(CONFIG, seed=3)
    reference = _dropout_model(3)
    train_model(reference, dataset().repeat(), dataset(), config, tmp_path / "fresh", False)

    other = _training_model(dataclasses.replace(spec, seed=5), _dropout_model(5))
    train_model(other, dataset().repeat(), dataset(), dataclasses.replace(config, seed=5),
                tmp_path / "other", False)
    train_step = other.train_function
    forward = inference._compiled(other)  # validation runs the inference function
    again = _training_model(spec, _dropout_model(3))
    assert again is other  # the earlier model, now holding the fresh model's values
    train_model(again, dataset().repeat(), dataset(), config, tmp_path / "again", False)
    assert again.train_function is train_step and inference._compiled(again) is forward
    assert forward.experimental_get_tracing_count() == 1
    for reused, fresh in zip(again.variables, reference.variables, strict=True):
        np.testing.assert_array_equal(reused.numpy(), fresh.numpy(), err_msg=reused.path)
    assert int(again.optimizer.iterations) == config.epochs * config.steps_per_epoch
    # Grappler is off only while training (see _graph_rewrites).
    assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer")
    # Another schedule (finetuning) reuses the step and gives what a fresh model gets with it.
    tuned = finetune_config(config, epochs=2)
    fresh_tuned = _dropout_model(3)
    expected = train_model(fresh_tuned, dataset().repeat(), dataset(), tuned,
                           tmp_path / "fresh-tuned", False)
    again = _training_model(spec, _dropout_model(3))
    result = train_model(again, dataset().repeat(), dataset(), tuned, tmp_path / "tuned", False)
    assert again.train_function is train_step
    assert list(result.history["learning_rate"]) == pytest.approx([5e-5, 2.5e-5])
    pd.testing.assert_frame_equal(result.history.drop(columns="seconds"),
                                  expected.history.drop(columns="seconds"))
    for reused, fresh in zip(again.variables, fresh_tuned.variables, strict=True):
        np.testing.assert_array_equal(reused.numpy(), fresh.numpy(), err_msg=reused.path)
    # Another loss changes the traced step: compiled afresh.
    train_model(again, dataset().repeat(), dataset(),
                dataclasses.replace(config, focal_gamma=1.0), tmp_path / "gamma", False)
    assert again.train_function is not train_step


def test_a_trained_model_loads_for_inference_without_the_training_module(tmp_path):
    """Deployment loads book models in processes that never import glacier_mapping.training
    (whose optimizer and schedule the file's training setup names)."""
    result = train_model(tiny_model(), dataset().repeat(), dataset(), CONFIG, tmp_path, False)
    code = (
        "import sys\n"
        "from glacier_mapping.models import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "assert 'glacier_mapping.training' not in sys.modules\n"
        "print(len(model.get_weights()))\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(result.best_model_path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert int(child.stdout.split()[-1]) == len(tiny_model().get_weights())
