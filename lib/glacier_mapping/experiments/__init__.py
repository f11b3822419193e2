"""The studies the book runs: the paper's strategies, the sensor ablation, the Everest scene.

:mod:`~glacier_mapping.experiments.strategies` declares what to train,
:mod:`~glacier_mapping.experiments.runner` trains it (once, through the store, in worker
processes when the profile allows), :mod:`~glacier_mapping.experiments.ablation` and
:mod:`~glacier_mapping.experiments.everest` are the two studies built on them.
"""
