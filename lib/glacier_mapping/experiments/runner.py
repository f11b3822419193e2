"""Training the experiments: each once through the store, several at a time when allowed.

:func:`train_experiment` trains one :class:`~glacier_mapping.experiments.strategies.ExperimentSpec`
with the book's one recipe (:func:`glacier_mapping.trained_models.train_cached`); the model is
keyed by the spec and the benchmark's fingerprint, so every chapter that asks for the same spec
(the global model of chapter 02, reused in chapters 03-08) gets the same model. What runs where
is :mod:`glacier_mapping.scheduling`'s: :func:`train_experiments` groups experiments by build,
trains the groups in worker processes, and runs a follow-up (e.g. the predictions a chapter
evaluates) right after each training while the model is loaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from glacier_mapping.distribute import training_strategy
from glacier_mapping.experiments.strategies import ExperimentSpec
from glacier_mapping.lazy import lazy_module
from glacier_mapping.scheduling import ModelPool, run_groups, uses_workers
from glacier_mapping.trained_models import TrainedModel, TrainingSetup, train_cached
from glacier_mapping.workflow import Context

if TYPE_CHECKING:
    import keras

models = lazy_module("glacier_mapping.models")
patches = lazy_module("glacier_mapping.data.patches")
training = lazy_module("glacier_mapping.training")

#: A trained experiment.
Experiment = TrainedModel[ExperimentSpec]
#: A follow-up of :func:`train_experiments`: a module-level function of the context and model.
FollowUp = Callable[[Context, Experiment], Any]

#: Model builds this process keeps for reuse by training and prediction (a few MB each).
MODELS_KEPT = 4
POOL = ModelPool(MODELS_KEPT)


def train_experiment(context: Context, spec: ExperimentSpec, verbose: bool = True) -> Experiment:
    """Train an experiment once (or reuse it); its card goes to ``outputs/.../models/<name>``.

    When the profile trains in worker processes, a model not yet trained is trained in one
    (see :mod:`glacier_mapping.scheduling`: its weights must not depend on where it trained).
    """
    parent = train_experiment(context, spec.finetune_from, verbose) if spec.finetune_from else None
    inputs = [parent.artifact] if parent else []
    params = _model_params(context, spec)
    if uses_workers(context) and not context.store.exists("model", params, inputs):
        return train_experiments(context, [spec], verbose=verbose)[0]
    trained_here: list[Any] = []  # the kept model, which ends holding the best weights

    def setup() -> TrainingSetup:
        if verbose:
            print(f"Training {spec.name} ({spec.architecture}/{spec.preset}, "
                  f"{'+'.join(spec.sensors)}, {spec.epochs} epochs)")
        distribute = context.profile.training.distribute
        strategy = training_strategy(distribute)
        models.set_seed(spec.seed)  # the initial weights depend on the seed only
        deep_supervision = spec.architecture == "glavitu"
        with strategy.scope():  # train_model compiles and fits under the model's strategy
            model = models.build_model(
                spec.architecture, spec.sensors, spec.patch_size, spec.preset,
                location_size=spec.location_size, deep_supervision=deep_supervision,
            )
        if distribute == "none":
            model = _training_model(spec, model)
            trained_here.append(model)
        bench = context.benchmark
        common = dict(sensors=spec.sensors, patch_size=spec.patch_size,
                      batch_size=spec.batch_size, location=spec.location,
                      deep_supervision=deep_supervision, regions=spec.regions)
        train_ds = patches.make_patch_dataset(bench.train, mode="random", augment=True,
                                              seed=spec.seed, **common)
        val_ds = patches.make_patch_dataset(bench.val, mode="sequential", augment=False,
                                            label_smoothing=0.0, seed=spec.seed, **common)
        card = {"name": spec.name, "architecture": spec.architecture, "preset": spec.preset,
                "strategy": spec.strategy, "sensors": spec.sensors,
                "regions": spec.regions or "all", "location": spec.location,
                "patch_size": spec.patch_size, "training_data": context.data_key,
                "synthetic_data": context.synthetic,
                "finetuned_from": spec.finetune_from.name if spec.finetune_from else None,
                "distribute": distribute, "replicas": strategy.num_replicas_in_sync}
        return TrainingSetup(model, train_ds, val_ds, _train_config(context, spec, parent),
                             bench.stats(), card)

    artifact, card = train_cached(context, "model", params, setup, inputs, verbose)
    if trained_here:
        POOL.keep(spec.build, trained_here[0], holds=artifact.key)
    return TrainedModel(spec, artifact, card)


def _model_params(context: Context, spec: ExperimentSpec) -> dict[str, Any]:
    """What the key of an experiment's model artifact is made of (besides its parent)."""
    return {**spec.key_params(), "data": context.data_key}


def _train_config(context: Context, spec: ExperimentSpec,
                  parent: Experiment | None) -> training.TrainConfig:
    config = training.TrainConfig(
        epochs=spec.epochs, steps_per_epoch=spec.steps_per_epoch,
        learning_rate=spec.learning_rate,
        restart_epochs=spec.restart_epochs or (spec.epochs,), seed=spec.seed,
        batchnorm_momentum=spec.batchnorm_momentum,
        run_eagerly=context.profile.training.run_eagerly,
    )
    if parent is None:
        return config
    return training.finetune_config(config, epochs=spec.epochs, init_weights=parent.model_path)


def train_experiments(
    context: Context,
    specs: Sequence[ExperimentSpec],
    after: FollowUp | None = None,
    verbose: bool = True,
) -> list[Experiment]:
    """Train experiments (or reuse them), several at a time when the profile allows it.

    Experiments of one build (architecture, inputs, preset) train one after another in one
    process, reusing its traced steps; builds train side by side in worker processes
    (``training.parallel_experiments``, see :mod:`glacier_mapping.scheduling`). ``after``, a
    module-level function, runs right after each training in the same process, while the model
    is loaded: e.g. the predictions a chapter evaluates, which the chapter then finds in the
    store; for models trained before, it runs here while the workers train. Models whose parent
    (finetuning) is missing get it trained first, here.
    """
    for parent in dict.fromkeys(spec.finetune_from for spec in specs if spec.finetune_from):
        train_experiment(context, parent, verbose)
    groups: dict[tuple[Any, ...], list[tuple[ExperimentSpec, FollowUp | None, bool]]] = {}
    trained = []
    for spec in specs:
        if _is_trained(context, spec):
            trained.append(spec)
        else:
            groups.setdefault(spec.build, []).append((spec, after, verbose))
    by_cost = sorted(groups.values(), key=lambda group: -sum(
        item[0].epochs * item[0].steps_per_epoch for item in group))  # longest first

    def follow_trained() -> None:  # here, while the workers train the others
        for spec in trained if after is not None else []:
            after(context, train_experiment(context, spec, verbose))

    run_groups(context, _train_and_follow, by_cost, describe=lambda item: item[0].name,
               meanwhile=follow_trained)
    return [train_experiment(context, spec, verbose) for spec in specs]


def _is_trained(context: Context, spec: ExperimentSpec) -> bool:
    """Whether the experiment's model is in the store (its parent must be)."""
    inputs = [train_experiment(context, spec.finetune_from, False).artifact] if (
        spec.finetune_from) else []
    return context.store.exists("model", _model_params(context, spec), inputs)


def _train_and_follow(
    context: Context, item: tuple[ExperimentSpec, FollowUp | None, bool]
) -> None:
    """Train one experiment, then run its follow-up (a worker task of train_experiments)."""
    spec, after, verbose = item
    trained = train_experiment(context, spec, verbose)
    if after is not None:
        after(context, trained)


def _training_model(spec: ExperimentSpec, fresh: keras.Model) -> keras.Model:
    """The model to train: ``fresh``, or an earlier model of the same build with its values.

    A model of the same architecture, inputs and preset used earlier in this process takes
    every variable of ``fresh`` (weights, BatchNorm statistics, dropout seed state), so it
    starts exactly where ``fresh`` would, and :func:`glacier_mapping.training.train_model`
    reuses its traced steps when the training setup matches (ablation seeds, regional and
    finetuned models of one strategy) instead of tracing them again (10-20 s each on 2 cores).
    """
    model, _ = POOL.take(spec.build)
    if model is None:
        model = fresh
    else:
        for variable, value in zip(model.variables, fresh.variables, strict=True):
            variable.assign(value)
    POOL.keep(spec.build, model)
    return model


def prediction_model(trained: Experiment) -> keras.Model:
    """A model holding ``trained``'s weights, reusing one of the same build when there is one.

    Only for immediate use: the next call for a model of the same build changes its weights.
    Reuse saves loading the whole model and tracing its inference function again, and a model
    that already holds ``trained``'s weights (just trained, or just used for another split) is
    not even reloaded (1-2 s per load of a small GlaViTU).
    """
    model, holds = POOL.take(trained.spec.build)
    if model is None:
        model = trained.load()
    elif holds != trained.artifact.key:
        with warnings.catch_warnings():  # the file's optimizer state is not needed
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(trained.model_path)
    POOL.keep(trained.spec.build, model, holds=trained.artifact.key)
    return model
