"""Tests of glacier_mapping.inference with tiny functional Keras models."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import tensorflow as tf
import xarray as xr
from keras import layers

import glacier_mapping.models
from glacier_mapping import inference
from glacier_mapping.inference import (
    WindowBlender,
    narrow_window,
    original_window,
    predict_array,
    predict_dataarray,
    predict_windows,
    window_origins,
)

CONSTANT = np.array([0.3, 0.7], dtype=np.float32)


def _inputs(location: bool = False) -> dict:
    inputs = {
        "optical": keras.Input((None, None, 3), name="optical"),
        "dem": keras.Input((None, None, 2), name="dem"),
    }
    if location:
        inputs["location"] = keras.Input((4,), name="location")
    return inputs


def constant_model() -> keras.Model:
    inputs = _inputs()
    logits = layers.Conv2D(
        2,
        1,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(np.log(CONSTANT)),
    )(inputs["optical"])
    output = layers.Softmax()(logits)
    return keras.Model(inputs, {"output": output, "deepsupervision": output})


def pixel_model(location: bool = False) -> keras.Model:
    """A per-pixel (1x1 convolution) model, optionally shifted by a location embedding."""
    keras.utils.set_random_seed(4)
    inputs = _inputs(location)
    features = layers.Concatenate()([inputs["optical"], inputs["dem"]])
    logits = layers.Conv2D(2, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(
        features
    )
    if location:
        shift = layers.Dense(2)(inputs["location"])
        logits = logits + shift[:, None, None, :]
    return keras.Model(inputs, {"output": layers.Softmax()(logits)})


def _features(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "optical": rng.normal(size=(height, width, 3)).astype("float32"),
        "dem": rng.normal(size=(height, width, 2)).astype("float32"),
    }


def _direct(model: keras.Model, features: dict, location=None) -> np.ndarray:
    batch = {name: array[None] for name, array in features.items()}
    if location is not None:
        batch["location"] = np.asarray(location, "float32")[None]
    return keras.ops.convert_to_numpy(model(batch, training=False)["output"])[0]


def test_blending_windows_are_positive_peaked_and_symmetric():
    for kernel in (narrow_window, original_window):
        for size in (1, 7, 16):
            window = kernel(size)
            assert window.shape == (size, size) and window.dtype == np.float32
            assert np.all(window > 0) and window.max() == 1.0
            np.testing.assert_allclose(window, window.T)
            np.testing.assert_allclose(window, window[::-1, ::-1])
        assert kernel(16)[7, 7] > kernel(16)[0, 7] > kernel(16)[0, 0]
    # The original's kernel is wide (corner exp(-1) of the centre), the narrow one is not.
    assert original_window(385)[0, 0] == pytest.approx(np.exp(-1.0), rel=1e-6)
    assert 1e-8 < narrow_window(385)[0, 0] < 1e-6


def context_model(patch: int) -> keras.Model:
    """Outputs depend on the whole window (3x3 conv plus the window mean), so blending matters."""
    keras.utils.set_random_seed(7)
    inputs = _inputs()
    features = layers.Concatenate()([inputs["optical"], inputs["dem"]])
    local = layers.Conv2D(2, 3, padding="same")(features)
    pooled = layers.Dense(2)(layers.GlobalAveragePooling2D(keepdims=True)(features))
    logits = local + 3.0 * layers.UpSampling2D(patch)(pooled)
    return keras.Model(inputs, {"output": layers.Softmax()(logits)})


def test_original_blend_equals_the_original_formula_on_the_same_windows():
    patch, stride, height, width = 16, 8, 40, 52
    model = context_model(patch)
    features = _features(height, width, seed=3)
    # The original's formula: every window's softmax weighted by c * exp(-(x^2 + y^2) / 2) with
    # x, y = linspace(-1, 1, P), summed, divided by the summed weights (c = 1.25 cancels).
    axis = np.linspace(-1.0, 1.0, patch)
    kernel = 1.25 * np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / 2.0)
    sums, weights = np.zeros((height, width, 2)), np.zeros((height, width))
    for row, col in window_origins(height, width, patch, stride):
        window = {k: v[row : row + patch, col : col + patch] for k, v in features.items()}
        probs = _direct(model, window).astype(np.float64)
        sums[row : row + patch, col : col + patch] += probs * kernel[..., None]
        weights[row : row + patch, col : col + patch] += kernel
    expected = sums / weights[..., None]
    original = predict_array(model, features, patch, stride=stride, blend="original")
    assert np.abs(original - expected).max() <= 1e-5
    narrow = predict_array(model, features, patch, stride=stride, blend="narrow")
    assert np.abs(narrow - expected).max() > 1e-3  # the blend is not immaterial here


def test_window_origins_cover_borders():
    origins = window_origins(20, 16, 8, 4)
    rows = sorted({row for row, _ in origins})
    cols = sorted({col for _, col in origins})
    assert rows == [0, 4, 8, 12] and cols == [0, 4, 8]
    assert sorted({row for row, _ in window_origins(21, 8, 8, 4)}) == [0, 4, 8, 12, 13]
    with pytest.raises(ValueError, match="smaller than patch_size"):
        window_origins(7, 20, 8, 4)
    with pytest.raises(ValueError, match="stride"):
        window_origins(20, 20, 8, 9)


def test_window_blender_normalises_streams_rows_and_checks_order():
    blender = WindowBlender(11, 10, 6, 3)
    assert blender.origins == window_origins(11, 10, 6, 3)
    with pytest.raises(ValueError, match=r"out of order.*next: \(0, 0\)"):
        blender.add(np.zeros((6, 6, 2), "float32"), 0, 3)
    with pytest.raises(ValueError, match="shape"):
        blender.add(np.zeros((5, 6, 2), "float32"), 0, 0)
    finished = []
    for row, col in blender.origins:
        rows = blender.add(np.full((6, 6, 2), 0.25, "float32"), row, col, np.ones((6, 6), bool))
        if rows is not None:
            finished.append(rows)
            assert len(blender.weights) <= 6  # at most one patch of rows is held
    assert [rows.top for rows in finished] == [0, 3, 5]  # rows 0-2, 3-4, 5-10
    result = np.concatenate([rows.probs for rows in finished])
    assert result.shape == (11, 10, 2) and result.dtype == np.float32
    np.testing.assert_allclose(result, 0.25, rtol=1e-5)
    assert np.concatenate([rows.mask for rows in finished]).all()
    with pytest.raises(ValueError, match="out of order.*next: none"):
        blender.add(np.zeros((6, 6, 2), "float32"), 5, 4)


def test_window_blender_is_one_float32_weighted_mean():
    """Each pixel: the float32 sum of probability x weight over its windows / sum of weights."""
    rng = np.random.default_rng(0)
    blender = WindowBlender(9, 13, 5, 2, blend="original")
    probs = {origin: rng.uniform(size=(5, 5, 2)).astype("float32") for origin in blender.origins}
    sums, weights = np.zeros((9, 13, 2), "float32"), np.zeros((9, 13), "float32")
    finished = []
    for (row, col), window_probs in probs.items():
        sums[row : row + 5, col : col + 5] += window_probs * blender.window[..., None]
        weights[row : row + 5, col : col + 5] += blender.window
        rows = blender.add(window_probs, row, col)
        if rows is not None:
            finished.append(rows)
    assert all(rows.mask is None for rows in finished)
    np.testing.assert_array_equal(np.concatenate([rows.probs for rows in finished]),
                                  sums / weights[..., None])
    mixed = WindowBlender(5, 7, 5, 2)
    mixed.add(np.zeros((5, 5, 2), "float32"), 0, 0, np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="mask with every window"):
        mixed.add(np.zeros((5, 5, 2), "float32"), 0, 2)


@pytest.mark.parametrize(("height", "width"), [(21, 19), (5, 7)])
def test_constant_model_gives_constant_everywhere(height, width):
    probs = predict_array(constant_model(), _features(height, width), patch_size=8, batch_size=3)
    assert probs.shape == (height, width, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, np.broadcast_to(CONSTANT, probs.shape), rtol=1e-5)


def test_windowed_equals_direct_for_per_pixel_model():
    model = pixel_model()
    features = _features(23, 18, seed=1)
    windowed = predict_array(model, features, patch_size=8, stride=3, batch_size=4)
    np.testing.assert_allclose(windowed, _direct(model, features), atol=1e-5)


def test_location_is_repeated_per_window():
    model = pixel_model(location=True)
    features = _features(12, 12, seed=2)
    location = np.array([0.5, -1.0, 2.0, 0.1], "float32")
    windowed = predict_array(model, features, patch_size=8, location=location)
    np.testing.assert_allclose(windowed, _direct(model, features, location), atol=1e-5)
    with pytest.raises(ValueError, match="location"):
        predict_array(model, features, patch_size=8)


def test_tta_of_per_pixel_model_equals_no_tta():
    model = pixel_model()
    features = _features(16, 13, seed=3)
    plain = predict_array(model, features, patch_size=8)
    augmented = predict_array(model, features, patch_size=8, tta=True)
    np.testing.assert_allclose(augmented, plain, atol=1e-5)


def test_tta_changes_a_model_that_is_not_rotation_invariant():
    keras.utils.set_random_seed(5)
    inputs = _inputs()
    logits = layers.Conv2D(
        2, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0)
    )(inputs["optical"])
    model = keras.Model(inputs, {"output": layers.Softmax()(logits)})
    batch = {name: array[None] for name, array in _features(8, 8, seed=6).items()}
    plain = predict_windows(model, batch)
    augmented = predict_windows(model, batch, tta=True)
    assert augmented.shape == plain.shape == (1, 8, 8, 2)
    np.testing.assert_allclose(augmented.sum(axis=-1), 1.0, atol=1e-5)
    assert np.abs(augmented - plain).max() > 1e-3


@keras.saving.register_keras_serializable(package="tests")
class FlagNoise(layers.Layer):
    """Adds noise only while a non-trainable flag variable is 1 (stands in for MC dropout)."""

    def build(self, input_shape):
        self.flag = self.add_weight(shape=(), initializer="zeros", trainable=False, name="flag")
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, x):
        noise = keras.random.normal(keras.ops.shape(x), stddev=1.0, seed=self.seed_generator)
        return x + self.flag * noise


def test_mc_dropout_passes_differ_and_flag_is_reset(monkeypatch):
    keras.utils.set_random_seed(8)
    inputs = _inputs()
    noisy = FlagNoise()
    logits = layers.Conv2D(2, 1)(noisy(inputs["optical"]))
    model = keras.Model(inputs, {"output": layers.Softmax()(logits)})
    calls = []

    def fake_set_mc_dropout(target, enabled):
        calls.append(enabled)
        noisy.flag.assign(1.0 if enabled else 0.0)

    monkeypatch.setattr(inference, "set_mc_dropout", fake_set_mc_dropout)
    batch = {name: array[None] for name, array in _features(8, 8, seed=9).items()}
    deterministic = predict_windows(model, batch)
    np.testing.assert_array_equal(deterministic, predict_windows(model, batch))
    first = predict_windows(model, batch, mc_passes=1)
    second = predict_windows(model, batch, mc_passes=1)
    assert np.abs(first - second).max() > 1e-3
    averaged = predict_windows(model, batch, mc_passes=3)
    assert averaged.shape == (1, 8, 8, 2)
    assert calls == [True, False] * 3
    # The flag is off again: the compiled function sees the variable without retracing.
    np.testing.assert_array_equal(predict_windows(model, batch), deterministic)
    assert inference._compiled(model).experimental_get_tracing_count() == 1


def test_one_compiled_function_per_model():
    model = pixel_model()
    predict_array(model, _features(20, 20), patch_size=8, batch_size=3)
    function = inference._compiled(model)
    predict_array(model, _features(11, 30), patch_size=8, batch_size=3)
    assert inference._compiled(model) is function
    assert function.experimental_get_tracing_count() <= 2


def test_predict_dataarray_keeps_grid_and_crs():
    model = pixel_model()
    features = _features(12, 10, seed=10)
    y = 5000.0 - 30.0 * np.arange(12)
    x = 300000.0 + 30.0 * np.arange(10)
    data = {}
    for name, array in features.items():
        data[name] = xr.DataArray(
            np.moveaxis(array, -1, 0),
            dims=("band", "y", "x"),
            coords={"band": np.arange(array.shape[-1]) + 1, "y": y, "x": x},
        ).rio.write_crs("EPSG:32632")
    probs = predict_dataarray(model, data, patch_size=8)
    assert probs.dims == ("y", "x", "class")
    assert list(probs["class"].values) == ["background", "glacier"]
    np.testing.assert_array_equal(probs["y"], y)
    assert probs.rio.crs.to_epsg() == 32632
    np.testing.assert_allclose(probs.values, _direct(model, features), atol=1e-5)
    shifted = {**data, "dem": data["dem"].assign_coords(x=x + 1)}
    with pytest.raises(ValueError, match="coordinates"):
        predict_dataarray(model, shifted, patch_size=8)


def test_bad_features_raise_clear_errors():
    model = pixel_model()
    with pytest.raises(ValueError, match="differ in height/width"):
        predict_array(model, {"optical": np.zeros((8, 8, 3)), "dem": np.zeros((9, 8, 2))}, 8)
    with pytest.raises(ValueError, match="needs inputs"):
        predict_array(model, {"optical": np.zeros((8, 8, 3))}, 8)


def test_uniform_blend_is_the_plain_mean_of_overlapping_windows():
    uniform = WindowBlender(4, 6, 4, 2, blend="uniform")
    assert uniform.add(np.full((4, 4, 2), 0.2, "float32"), 0, 0) is None
    result = uniform.add(np.full((4, 4, 2), 0.6, "float32"), 0, 2).probs
    np.testing.assert_allclose(result[:, 2:4], 0.4, rtol=1e-6)
    np.testing.assert_allclose(result[:, :2], 0.2, rtol=1e-6)
    narrow = WindowBlender(4, 6, 4, 2)
    narrow.add(np.full((4, 4, 2), 0.2, "float32"), 0, 0)
    result = narrow.add(np.full((4, 4, 2), 0.6, "float32"), 0, 2).probs
    assert not np.allclose(result[:, 2:4], 0.4, rtol=1e-3)


def test_precision_and_blend_names_are_checked():
    model = pixel_model()
    with pytest.raises(ValueError, match="precision='half'"):
        predict_array(model, _features(8, 8), 8, precision="half")
    with pytest.raises(ValueError, match="blend='box'"):
        predict_array(model, _features(8, 8), 8, blend="box")


def test_auto_precision_follows_hardware_support(monkeypatch):
    monkeypatch.setattr(inference, "bfloat16_supported", lambda: True)
    assert inference.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(inference, "bfloat16_supported", lambda: False)
    assert inference.resolve_precision("auto") == "float32"
    assert inference.resolve_precision("bfloat16") == "bfloat16"
    model = pixel_model()
    assert inference.inference_model(model, "auto") is model


def test_bfloat16_is_close_to_float32_with_float32_outputs():
    keras.utils.set_random_seed(11)
    model = glacier_mapping.models.build_model("glavitu", ("optical", "dem"), 32, "tiny")
    rng = np.random.default_rng(12)
    features = {"optical": rng.random((40, 36, 6), dtype=np.float32),
                "dem": rng.random((40, 36, 2), dtype=np.float32)}
    full = predict_array(model, features, 32)
    half = predict_array(model, features, 32, precision="bfloat16")
    assert half.dtype == np.float32 and half.shape == full.shape
    difference = np.abs(half - full)
    assert 0 < difference.max() < 0.05  # it differs: the bfloat16 copy really ran
    assert (half.argmax(-1) == full.argmax(-1)).mean() > 0.97
    copy = inference.inference_model(model, "bfloat16")
    assert copy.get_layer("output").dtype_policy.name == "float32"
    assert copy.get_layer("fusion_optical_1_conv").dtype_policy.name == "bfloat16"
    assert copy.get_layer("setr_block0_ln1").dtype_policy.name == "mixed_bfloat16"
    stored = {weight.dtype for layer in copy.layers for weight in layer.weights
              if isinstance(layer, (layers.Conv2D, layers.Dense))
              and layer.dtype_policy.name == "bfloat16"}
    assert stored == {"bfloat16"}
    assert copy.get_layer("output").weights[0].dtype == "float32"
    assert all(weight.dtype == "float32" for layer in copy.layers for weight in layer.weights
               if isinstance(layer, layers.LayerNormalization))


def test_bfloat16_copy_follows_weight_changes():
    model = pixel_model()
    features = _features(10, 10, seed=13)
    before = predict_array(model, features, 8, precision="bfloat16")
    conv = next(layer for layer in model.layers if isinstance(layer, layers.Conv2D))
    conv.kernel.assign(-conv.kernel.numpy())
    after = predict_array(model, features, 8, precision="bfloat16")
    np.testing.assert_allclose(after, predict_array(model, features, 8), atol=0.03)
    assert np.abs(after - before).max() > 0.1


def test_large_batches_run_in_pieces_with_the_same_result(monkeypatch):
    keras.utils.set_random_seed(14)
    inputs = _inputs()
    logits = layers.Conv2D(2, 3, padding="same")(inputs["optical"])
    model = keras.Model(inputs, {"output": layers.Softmax()(logits)})
    batch = {name: np.stack([_features(8, 8, seed=s)[name] for s in range(5)])
             for name in ("optical", "dem")}
    whole = predict_windows(model, batch)
    sizes = []
    real = inference._compiled

    def counting(target):
        function = real(target)

        def call(pieces):
            sizes.append(len(pieces["optical"]))
            return function(pieces)

        return call

    monkeypatch.setattr(inference, "_compiled", counting)
    monkeypatch.setattr(inference, "MAX_PIXELS_PER_CALL", 2 * 8 * 8)
    pieces = predict_windows(model, batch)
    assert sizes == [2, 2, 1]
    np.testing.assert_allclose(pieces, whole, atol=1e-6)


def test_many_models_do_not_trigger_the_retracing_warning():
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for seed in range(6):  # one trace per model and copy: not retracing
            keras.utils.set_random_seed(seed)
            model = glacier_mapping.models.build_model("glavitu", ("optical", "dem"), 32, "tiny")
            batch = {name: np.zeros((2, 32, 32, tensor.shape[-1]), np.float32)
                     for name, tensor in model.input.items()}
            inference.predict_heads(model, batch)
            predict_windows(inference.inference_model(model, fold=True), batch)
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [message for message in messages if "retracing" in message]
