"""The one training recipe: trained once into the store, published with its model card."""

import dataclasses
import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
from test_training import CONFIG, dataset, tiny_model

from glacier_mapping.config import load_profile
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.store import ArtifactStore
from glacier_mapping.trained_models import (
    CARD_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    NORM_STATS_FILE,
    PUBLISHED_FILES,
    ModelCard,
    TrainedModel,
    TrainingSetup,
    histories,
    model_loader,
    publish,
    train_cached,
)
from glacier_mapping.workflow import Context

PARAMS = {"model": "tiny", "seed": CONFIG.seed, "epochs": CONFIG.epochs}
FACTS = {"name": "tiny-global", "architecture": "glavitu", "preset": "tiny",
         "strategy": "global", "sensors": ("optical", "dem"), "regions": ("ALP", "NZ"),
         "patch_size": 8, "training_data": "abc", "synthetic_data": True}
STATS = NormStats({"dem": [0.0, 1.0]}, {"dem": [10.0, 2.0]}, source="test")


def _context(root):
    out = root / "outputs" / "smoke"
    return Context(load_profile("smoke"), out, ArtifactStore(out / "cache"), None, "k", True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model trained through train_cached, then asked for a second time."""
    ctx = _context(tmp_path_factory.mktemp("trained"))
    calls = []

    def setup():
        calls.append(1)
        return TrainingSetup(tiny_model(), dataset().repeat(), dataset(), CONFIG, STATS,
                             dict(FACTS))

    first = train_cached(ctx, "model", PARAMS, setup, verbose=False)
    second = train_cached(ctx, "model", PARAMS, setup, verbose=False)
    return ctx, first, second, calls


def test_train_cached_trains_once_and_keeps_the_files(trained):
    ctx, (artifact, card), (again, card_again), calls = trained
    assert calls == [1]  # the setup (model, data) is made only when training is needed
    assert not artifact.reused and again.reused
    assert again.key == artifact.key and again.path == artifact.path
    assert card_again == card
    assert sorted(p.name for p in artifact.path.iterdir()) == sorted(
        [*PUBLISHED_FILES, "artifact.json"])  # the training directory is removed
    events = [e for e in ctx.store.events() if e["kind"] == "model"]
    assert [e["reused"] for e in events] == [False, True]
    assert {e["key"] for e in events} == {artifact.key}
    assert ctx.store.metadata(artifact)["extra"] == {"train_seconds": card.train_seconds}


def test_train_cached_publishes_the_model_files(trained):
    ctx, (artifact, card), _, _ = trained
    target = ctx.output_dir / "models" / "tiny-global"
    assert sorted(p.name for p in target.iterdir()) == sorted(PUBLISHED_FILES)
    for name in PUBLISHED_FILES:
        assert (target / name).read_bytes() == artifact.file(name).read_bytes()
    assert ModelCard.read(target / CARD_FILE) == card


def test_the_card_describes_the_training(trained):
    _, (artifact, card), _, _ = trained
    assert card.name == "tiny-global" and card.regions == ("ALP", "NZ")
    assert card.sensors == ("optical", "dem") and card.synthetic_data is True
    assert card.seed == CONFIG.seed and card.learning_rate == CONFIG.learning_rate
    assert card.epochs == CONFIG.epochs == 3
    assert card.steps == CONFIG.epochs * CONFIG.steps_per_epoch
    assert card.parameter_count == sum(int(np.prod(w.shape)) for w in tiny_model().weights)
    history = pd.read_csv(artifact.file(HISTORY_FILE))
    assert len(history) == 3 and 1 <= card.best_epoch <= 3
    assert card.best_validation_value == pytest.approx(
        history[CONFIG.monitor].iloc[card.best_epoch - 1])
    assert card.best_validation_value == pytest.approx(history[CONFIG.monitor].max())
    assert card.convergence["converged"] is False and card.convergence["epochs"] == 3
    assert "too short" in card.convergence["reason"]
    assert card.train_seconds > 0 and card.norm_stats == NORM_STATS_FILE
    raw = json.loads(artifact.file(CARD_FILE).read_text())
    assert raw["regions"] == ["ALP", "NZ"] and raw["convergence"]["final_gain"] is None


def test_trained_model_history_stats_and_loader(trained, monkeypatch):
    _, (artifact, card), _, _ = trained
    model = TrainedModel("the spec", artifact, card)
    assert model.model_path == artifact.path / MODEL_FILE
    history = model.history()
    assert list(history["epoch"]) == [1, 2, 3] and CONFIG.monitor in history
    stats = model.norm_stats()
    assert stats.minimum == STATS.minimum and stats.maximum == STATS.maximum
    assert stats.source == "test"
    renamed = TrainedModel("other", artifact, dataclasses.replace(card, name="other"))
    both = histories([model, renamed])
    assert list(both) == ["tiny-global", "other"]
    pd.testing.assert_frame_equal(both["other"], history)

    loaded = model.load()
    assert isinstance(loaded, keras.Model) and set(loaded.input) == {"optical", "dem"}
    x = {"optical": np.full((1, 8, 8, 3), 0.5, "float32"), "dem": np.zeros((1, 8, 8, 2),
                                                                          "float32")}
    probs = loaded.predict(x, verbose=0)["output"]
    assert probs.shape == (1, 8, 8, 2)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)

    loads = []
    monkeypatch.setattr(TrainedModel, "load", lambda self: loads.append(1) or loaded)
    load = model_loader(model)
    assert load() is loaded and load() is loaded
    assert loads == [1]  # loaded at most once
    assert model_loader(model)() is loaded and loads == [1, 1]  # each loader is its own cache


def test_publish_copies_only_the_files_an_artifact_has(tmp_path):
    ctx = _context(tmp_path)
    old = ctx.store.get_or_create(
        "model", {"old": 1}, lambda d: (d / MODEL_FILE).write_bytes(b"weights"))
    target = publish(ctx, "old-model", old)
    assert target == ctx.output_dir / "models" / "old-model"
    assert [p.name for p in target.iterdir()] == [MODEL_FILE]
    assert (target / MODEL_FILE).read_bytes() == b"weights"


def test_model_card_round_trip(tmp_path):
    card = ModelCard(name="m", architecture="deeplab", preset="small", strategy="finetuning",
                     sensors=("optical", "dem", "thermal"), regions=("HMA",),
                     location="region", patch_size=64, training_data={"scene": "Everest"},
                     seed=3, learning_rate=5e-5, batchnorm_momentum=0.9,
                     finetuned_from="deeplab-global", bands={"thermal": "zeros"},
                     convergence={"converged": True, "final_gain": 0.001}, best_epoch=2,
                     best_validation_value=0.75)
    path = card.write(tmp_path / "cards" / CARD_FILE)
    assert [p.name for p in path.parent.iterdir()] == [CARD_FILE]  # written atomically
    back = ModelCard.read(path)
    assert back == card
    assert isinstance(back.sensors, tuple) and isinstance(back.regions, tuple)
    assert back.regions_text() == "HMA"


def test_model_card_read_ignores_unknown_and_defaults_missing_keys(tmp_path):
    path = tmp_path / CARD_FILE
    path.write_text(json.dumps({"name": "old", "architecture": "glavitu", "preset": "tiny",
                                "strategy": "global", "sensors": ["optical", "dem"],
                                "regions": "all", "removed_field": 1, "epochs": 4}))
    card = ModelCard.read(path)
    assert card.sensors == ("optical", "dem") and card.regions == "all"
    assert card.epochs == 4 and card.replicas == 1 and card.distribute == "none"
    assert math.isnan(card.best_validation_value) and card.convergence == {}
    assert card.norm_stats == NORM_STATS_FILE and card.finetuned_from is None
    assert not hasattr(card, "removed_field")
    assert card.regions_text() == "all"
    no_sensors = tmp_path / "minimal.json"
    no_sensors.write_text(json.dumps({"name": "x", "architecture": "glavitu", "preset": "tiny",
                                      "strategy": "global"}))
    assert ModelCard.read(no_sensors).sensors == ()


def test_regions_text():
    card = ModelCard(name="m", architecture="glavitu", preset="tiny", strategy="regional",
                     sensors=("optical",), regions=("HMA", "SVAL", "ALP"))
    assert card.regions_text() == "HMA+SVAL+ALP"
    assert ModelCard(name="m", architecture="glavitu", preset="tiny", strategy="global",
                     sensors=("optical",)).regions_text() == "all"
