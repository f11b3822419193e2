"""Tests of the model builders, presets, MC dropout and .keras round trips."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest

from glacier_mapping.data.schema import LOCATION_INPUT, SENSOR_CHANNELS
from glacier_mapping.models import (
    PRESETS,
    build_glavitu,
    build_model,
    count_parameters,
    set_mc_dropout,
)
from glacier_mapping.models.deeplab import build_deeplab


def make_batch(sensors, patch, batch=2, location_size=None, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        s: rng.random((batch, patch, patch, SENSOR_CHANNELS[s]), dtype=np.float32)
        for s in sensors
    }
    if location_size:
        x[LOCATION_INPUT] = rng.random((batch, location_size), dtype=np.float32)
    return x


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_glavitu_output_shapes_and_softmax(preset):
    model = build_glavitu(["dem", "optical"], 32, preset)
    assert set(model.input) == {"optical", "dem"}
    out = model(make_batch(["optical", "dem"], 32), training=False)
    assert set(out) == {"output", "deepsupervision"}
    for value in out.values():
        value = np.asarray(value)
        assert value.shape == (2, 32, 32, 2)
        np.testing.assert_allclose(value.sum(-1), 1.0, atol=1e-5)


def test_glavitu_sensor_subset_without_deep_supervision():
    model = build_glavitu(["optical", "co_pol_sar", "thermal"], 16, "tiny", deep_supervision=False)
    out = model(make_batch(["optical", "co_pol_sar", "thermal"], 16), training=False)
    assert set(out) == {"output"}
    assert out["output"].shape == (2, 16, 16, 2)


@pytest.mark.parametrize(("patch", "expected"), [(64, 9_996_098), (384, 10_031_938)])
def test_glavitu_paper_parameter_count_matches_original(patch, expected):
    model = build_glavitu(["optical", "dem"], patch, "paper", deep_supervision=False)
    assert count_parameters(model) == expected
    assert tuple(model.outputs[0].shape[1:]) == (patch, patch, 2)
    assert model.count_params() == expected  # the MC-dropout switch is not a weight


def test_location_input_changes_output():
    model = build_glavitu(["optical"], 16, "tiny", location_size=12)
    assert LOCATION_INPUT in [t.name for t in model.inputs]
    x = make_batch(["optical"], 16, location_size=12)
    a = np.asarray(model(x, training=False)["output"])
    x[LOCATION_INPUT] = x[LOCATION_INPUT][::-1].copy()
    b = np.asarray(model(x, training=False)["output"])
    assert a.shape == (2, 16, 16, 2)
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 20}, "multiple of 16"),
        ({"preset": "huge"}, "Unknown model preset"),
        ({"sensors": ["lidar"]}, "Unknown sensor"),
        ({"location_size": 0}, "location_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = {"sensors": ["optical"], "patch_size": 32, "preset": "paper"} | kwargs
    with pytest.raises(ValueError, match=message):
        build_glavitu(**args)


def test_presets_have_required_names_and_sizes():
    assert {"paper", "small", "tiny"} <= set(PRESETS)
    small = count_parameters(build_glavitu(["optical", "dem"], 64, "small"))
    tiny = count_parameters(build_glavitu(["optical", "dem"], 64, "tiny"))
    assert 300_000 <= small <= 1_000_000
    assert tiny < small


def test_mc_dropout_switch_without_rebuild():
    model = build_glavitu(["optical", "dem"], 16, "tiny")
    x = make_batch(["optical", "dem"], 16)
    first = model.predict(x, verbose=0)["output"]
    np.testing.assert_array_equal(first, model.predict(x, verbose=0)["output"])
    set_mc_dropout(model, True)  # same compiled predict function, no retrace needed
    a = model.predict(x, verbose=0)["output"]
    b = model.predict(x, verbose=0)["output"]
    assert not np.allclose(a, b)
    assert not np.allclose(a, first)
    set_mc_dropout(model, False)
    np.testing.assert_array_equal(first, model.predict(x, verbose=0)["output"])


def test_keras_round_trip_safe_mode(tmp_path):
    model = build_glavitu(["optical", "dem"], 16, "tiny", location_size=4)
    x = make_batch(["optical", "dem"], 16, location_size=4)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode is on by default
    for key in ("output", "deepsupervision"):
        np.testing.assert_allclose(
            np.asarray(loaded(x, training=False)[key]),
            np.asarray(model(x, training=False)[key]),
            atol=1e-6,
        )
    set_mc_dropout(loaded, True)
    a = np.asarray(loaded(x, training=False)["output"])
    b = np.asarray(loaded(x, training=False)["output"])
    assert not np.allclose(a, b)


def test_tiny_model_overfits_one_batch():
    keras.utils.set_random_seed(1)
    model = build_glavitu(["optical", "dem"], 16, "tiny")
    x = make_batch(["optical", "dem"], 16, batch=4)
    mask = (x["optical"][..., 0] > 0.5).astype(np.int32)
    y = np.eye(2, dtype=np.float32)[mask]
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={"output": "categorical_crossentropy", "deepsupervision": "categorical_crossentropy"},
        jit_compile=False,
    )
    history = model.fit(x, {"output": y, "deepsupervision": y}, epochs=40, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_deeplab_shapes_and_round_trip(tmp_path):
    model = build_deeplab(["optical", "dem"], 32, "tiny", location_size=12)
    x = make_batch(["optical", "dem"], 32, location_size=12)
    out = model(x, training=False)
    assert set(out) == {"output"}
    assert out["output"].shape == (2, 32, 32, 2)
    path = tmp_path / "deeplab.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)["output"]), np.asarray(out["output"]), atol=1e-6
    )


def test_deeplab_paper_builds():
    model = build_deeplab(["optical", "dem"], 64, "paper")
    assert tuple(model.outputs[0].shape[1:]) == (64, 64, 2)
    assert count_parameters(model) > 20_000_000


def test_build_model_dispatches():
    glavitu = build_model("glavitu", ["optical"], 16, "tiny", deep_supervision=False)
    deeplab = build_model("deeplab", ["optical"], 32, "tiny")
    assert set(glavitu(make_batch(["optical"], 16), training=False)) == {"output"}
    assert set(deeplab(make_batch(["optical"], 32), training=False)) == {"output"}
    with pytest.raises(ValueError, match="architecture"):
        build_model("unet", ["optical"], 16, "tiny")


def test_fused_batch_normalization_equals_the_keras_layer():
    """Outputs, input and weight gradients and moving statistics, in training and inference."""
    import tensorflow as tf

    from glacier_mapping.models.blocks import FusedBatchNormalization

    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 6, 5, 3)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(4, 6, 5, 3)).astype("float32"))
    results = []
    for layer in (keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.9),
                  FusedBatchNormalization(epsilon=1e-3, momentum=0.9)):
        layer.build(x.shape)
        layer.gamma.assign(rng.normal(1.0, 0.1, 3).astype("float32"))
        layer.beta.assign([0.1, -0.2, 0.3])
        with tf.GradientTape() as tape:
            tape.watch(x)
            trained = layer(x, training=True)
            loss = tf.reduce_sum(trained * upstream)
        gradients = tape.gradient(loss, [x, layer.gamma, layer.beta])
        moving = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
        results.append((trained.numpy(), *[g.numpy() for g in gradients], *moving,
                        layer(x, training=False).numpy()))
        rng = np.random.default_rng(3)  # the same gamma for the second layer
        rng.normal(2.0, 3.0, (4, 6, 5, 3)), rng.normal(size=(4, 6, 5, 3))
    names = ("output", "input gradient", "gamma gradient", "beta gradient", "moving mean",
             "moving variance", "inference output")
    for name, keras_value, fused_value in zip(names, *results, strict=True):
        np.testing.assert_allclose(fused_value, keras_value, rtol=2e-5, atol=2e-5, err_msg=name)


def test_fused_batch_normalization_under_mixed_bfloat16_matches_the_keras_layer():
    import tensorflow as tf

    from glacier_mapping.models.blocks import FusedBatchNormalization

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(1.0, 2.0, (2, 4, 4, 3)).astype("float32"))
    outputs = []
    for layer_class in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = layer_class(epsilon=1e-3, dtype="mixed_bfloat16")
        layer.build(x.shape)
        layer.moving_mean.assign([0.5, -0.5, 1.0])
        layer.moving_variance.assign([2.0, 4.0, 0.5])
        outputs.append(layer(tf.cast(x, "bfloat16"), training=False))
    assert outputs[1].dtype == outputs[0].dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(outputs[1], "float32"),
                               np.asarray(outputs[0], "float32"), atol=0.02, rtol=0.01)
