"""Tests of the inference copies with BatchNormalization folded into convolutions."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from keras import layers

from glacier_mapping import inference
from glacier_mapping.data.schema import LOCATION_INPUT, SENSOR_CHANNELS
from glacier_mapping.models import build_model
from glacier_mapping.models.folding import FoldedBatchNormalization, folding_pairs


def make_batch(sensors, patch, batch=2, location_size=None, seed=0):
    rng = np.random.default_rng(seed)
    x = {s: rng.random((batch, patch, patch, SENSOR_CHANNELS[s]), dtype=np.float32)
         for s in sensors}
    if location_size:
        x[LOCATION_INPUT] = rng.random((batch, location_size), dtype=np.float32)
    return x


def randomise_normalisation(model, seed):
    """Non-trivial BatchNormalization statistics and affine weights (fresh ones are identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, size).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size).astype(np.float32))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, size).astype(np.float32))


@pytest.mark.parametrize(("architecture", "location_size"), [("glavitu", None),
                                                              ("glavitu", 12),
                                                              ("deeplab", None)])
def test_folded_copy_computes_the_same_outputs(architecture, location_size):
    keras.utils.set_random_seed(3)
    model = build_model(architecture, ("optical", "dem"), 32, "tiny",
                        location_size=location_size)
    randomise_normalisation(model, seed=4)
    assert inference.inference_model(model, "float32") is model  # tiles: no copy to trace
    copy = inference.inference_model(model, "float32", fold=True)
    assert copy is not model
    pairs = folding_pairs(model)
    assert pairs and all(isinstance(copy.get_layer(name), FoldedBatchNormalization)
                         for name in pairs.values())
    assert not any(isinstance(layer, layers.BatchNormalization) and layer.name in pairs.values()
                   for layer in copy.layers)
    batch = make_batch(["optical", "dem"], 32, batch=3, location_size=location_size, seed=5)
    expected = model(batch, training=False)
    got = copy(batch, training=False)
    for head in expected:
        np.testing.assert_allclose(np.asarray(got[head]), np.asarray(expected[head]),
                                   atol=2e-5)


def test_every_glavitu_normalisation_after_a_convolution_is_folded():
    model = build_model("glavitu", ("optical", "dem"), 32, "tiny")
    convolutions = [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
    pairs = folding_pairs(model)
    followed = [name for name in convolutions
                if isinstance(model.get_layer(name)._outbound_nodes[0].operation,
                              layers.BatchNormalization)]
    assert sorted(pairs) == sorted(followed) and len(pairs) >= 10
    copy = inference.inference_model(model, fold=True)
    graph = inference._compiled(copy).get_concrete_function().graph
    assert not [op for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]


def test_folded_copy_follows_the_model_and_bfloat16_copy_is_folded_too():
    keras.utils.set_random_seed(6)
    model = build_model("glavitu", ("optical", "dem"), 32, "tiny")
    batch = make_batch(["optical", "dem"], 32, batch=2, seed=7)
    before = inference.predict_windows(inference.inference_model(model, fold=True), batch)
    randomise_normalisation(model, seed=8)
    after = inference.predict_windows(inference.inference_model(model, fold=True), batch)
    assert np.abs(after - before).max() > 0.05
    expected = np.asarray(model(batch, training=False)["output"])
    np.testing.assert_allclose(after, expected, atol=2e-5)
    half = inference.inference_model(model, "bfloat16")
    folded = half.get_layer(folding_pairs(model)["fusion_optical_1_conv"])
    assert isinstance(folded, FoldedBatchNormalization)
    assert folded.compute_dtype == "bfloat16"  # a float32 pass-through would cast up and down
    assert half.get_layer("fusion_optical_1_conv").compute_dtype == "bfloat16"
    np.testing.assert_allclose(inference.predict_windows(half, batch), expected, atol=0.05)


def test_a_normalisation_shared_with_another_branch_is_not_folded():
    inputs = keras.Input((8, 8, 3))
    conv = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    normalised = layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, {"output": layers.Add()([normalised, conv])})
    assert folding_pairs(model) == {}
    assert inference.inference_model(model, fold=True) is model
