"""Tests of glacier_mapping.adaptation (bias optimisation of the region vector) on toy models."""

import json

import keras
import numpy as np
import pytest
from keras import layers

from glacier_mapping.adaptation import (
    BiasOptimisationResult,
    load_region_vector,
    optimise_region_vector,
    save_region_vector,
)
from glacier_mapping.data.schema import LOCATION_SLOTS

PATCH = 8
SLOT = LOCATION_SLOTS.index("HMA")


def _toy_model(slot=SLOT, gain=20.0, location_size=12, use_location=True):
    """Glacier logit = gain * v[slot] * tanh(optical[..., 0]): confident only via slot `slot`."""
    optical = keras.Input((PATCH, PATCH, 6), name="optical")
    dem = keras.Input((PATCH, PATCH, 2), name="dem")
    location = keras.Input((location_size,), name="location")
    signal = layers.Activation("tanh")(layers.Lambda(lambda x: x[..., :1])(optical))
    selector = layers.Dense(1, use_bias=False, name="selector")
    scale = selector(location) if use_location else keras.ops.ones_like(location[:, :1]) * 0.5
    logit = signal * scale[:, None, None, :] * gain + 0.0 * dem[..., :1]
    output = layers.Softmax(name="output")(layers.Concatenate()([-logit, logit]))
    model = keras.Model({"optical": optical, "dem": dem, "location": location},
                        {"output": output})
    if use_location:
        kernel = np.zeros((location_size, 1), dtype="float32")
        kernel[slot % location_size] = 1.0
        selector.set_weights([kernel])
    return model


def _scene(height=24, width=20, seed=0):
    rng = np.random.default_rng(seed)
    return {"optical": rng.normal(size=(height, width, 6)).astype("float32"),
            "dem": rng.normal(size=(height, width, 2)).astype("float32"),
            "thermal": np.zeros((height, width, 1), "float32")}


def test_optimisation_lowers_entropy_and_finds_the_right_slot(capsys):
    model = _toy_model()
    weights_before = [w.copy() for w in model.get_weights()]
    result = optimise_region_vector(model, _scene(), PATCH, learning_rate=0.05, max_epochs=15,
                                    batches_per_epoch=2, seed=1)
    assert int(np.argmax(result.vector)) == SLOT
    assert result.vector[SLOT] > 0.3
    assert result.entropy_history[-1] < result.entropy_history[0] - 0.05
    assert result.vector.sum() == pytest.approx(1.0)
    assert result.epochs_run == len(result.entropy_history) <= 15
    for before, after in zip(weights_before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    lines = capsys.readouterr().out.strip().splitlines()
    assert 1 <= len(lines) <= 4 and "bias optimisation" in lines[-1]


def test_default_learning_rate_barely_moves_and_stops_by_rule():
    result = optimise_region_vector(_toy_model(), _scene(), PATCH, max_epochs=8, seed=0,
                                    progress=False)
    # lr 1e-4: each epoch moves the vector by far less than 1e-8 (squared) -> stops at patience
    assert result.converged and result.epochs_run == 5
    assert int(np.argmax(result.vector)) == SLOT
    np.testing.assert_allclose(result.vector, 1 / 12, atol=1e-3)


def test_model_ignoring_location_converges_after_patience():
    result = optimise_region_vector(_toy_model(use_location=False), _scene(), PATCH,
                                    learning_rate=0.5, patience=3, max_epochs=10, progress=False)
    assert result.converged and result.epochs_run == 3
    np.testing.assert_allclose(result.vector, 1 / 12, atol=1e-7)


def test_max_epochs_bounds_a_non_converging_run():
    result = optimise_region_vector(_toy_model(), _scene(), PATCH, learning_rate=0.05,
                                    tolerance=0.0, max_epochs=3, progress=False)
    assert not result.converged and result.epochs_run == 3


@pytest.mark.parametrize("model_kwargs,features,message", [
    ({"location_size": 4}, None, "location"),
    ({}, {"optical": np.zeros((6, 30, 6), "float32")}, "dem"),
    ({}, {"optical": np.zeros((6, 30, 6)), "dem": np.zeros((6, 30, 2))}, "smaller than"),
    ({}, {"optical": np.zeros((9, 9, 5)), "dem": np.zeros((9, 9, 2))}, r"optical.*\(H, W, 6\)"),
    ({}, {"optical": np.full((9, 9, 6), np.nan), "dem": np.zeros((9, 9, 2))}, "NaN"),
])
def test_clear_errors(model_kwargs, features, message):
    with pytest.raises(ValueError, match=message):
        optimise_region_vector(_toy_model(**model_kwargs), features or _scene(), PATCH,
                               progress=False)


def test_patch_size_must_match_fixed_model_input():
    with pytest.raises(ValueError, match="patch_size"):
        optimise_region_vector(_toy_model(), _scene(), 4, progress=False)


def test_save_and_load_round_trip(tmp_path):
    result = BiasOptimisationResult(vector=np.full(12, 1 / 12), logits=np.ones(12),
                                    epochs_run=5, converged=True, entropy_history=[0.5, 0.4])
    path = save_region_vector(result, tmp_path / "vec.json", metadata={"scene": "s1"})
    np.testing.assert_array_equal(load_region_vector(path), result.vector)
    data = json.loads(path.read_text())
    assert data["slots"] == list(LOCATION_SLOTS)
    assert data["metadata"] == {"scene": "s1"} and data["optimisation"]["converged"] is True
    one_hot = np.eye(12)[3]
    np.testing.assert_array_equal(load_region_vector(save_region_vector(one_hot, path)), one_hot)
    assert result.weights()["UNKNOWN"] == pytest.approx(1 / 12)


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="12 finite"):
        save_region_vector(np.ones(11), tmp_path / "v.json")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_region_vector(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "region_vector", "slots": ["A"] * 12,
                               "vector": [0] * 12}))
    with pytest.raises(ValueError, match="bad.json.*slots"):
        load_region_vector(bad)
