"""The ``tf.distribute`` strategy that trains models: one device, several GPUs, several machines.

The profile setting ``training.distribute`` picks it:

- ``none`` (default): TensorFlow's default strategy, i.e. plain single-device training.
- ``mirrored``: synchronous data parallelism over every visible GPU of this machine, or over
  its logical CPU devices when there is no GPU.
- ``multi-worker``: the same across machines; the cluster and this machine's role come from
  the ``TF_CONFIG`` environment variable, and every worker runs the same program.

The batch size of the profile is the global batch: each step splits it over the replicas, and
the averaged gradients equal one device's. Runs are still not bit-identical to one device:
dropout draws its masks per replica, BatchNormalization uses each replica's local batch, and
Keras reads one extra batch of a random-patch stream before training under a strategy.
TensorFlow is imported only when a strategy is made, so profile validation stays light.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf

DISTRIBUTE_CHOICES: tuple[str, ...] = ("none", "mirrored", "multi-worker")
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def check_distribute(name: object) -> str:
    """Return ``name`` if it is a known strategy name, else raise a clear ValueError."""
    if name not in DISTRIBUTE_CHOICES:
        raise ValueError(
            f"training.distribute={name!r} is not a known strategy; choose one of "
            f"{list(DISTRIBUTE_CHOICES)}."
        )
    return str(name)


@functools.cache
def training_strategy(name: str = "none") -> tf.distribute.Strategy:
    """The strategy called ``name`` (one object per process, so it is safe to ask again).

    Build and compile models inside ``strategy.scope()``. ``multi-worker`` must be asked for
    before TensorFlow runs anything else in the process (TensorFlow's rule for collectives).

    Args:
        name: One of :data:`DISTRIBUTE_CHOICES`.

    Raises:
        ValueError: For an unknown name, or for ``multi-worker`` with a missing or invalid
            ``TF_CONFIG``, or when TensorFlow had already started.
    """
    name = check_distribute(name)
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_replica_devices())
    check_tf_config(os.environ.get("TF_CONFIG"))
    try:
        return _multi_worker_strategy()
    except RuntimeError as error:
        raise ValueError(
            f"training.distribute='multi-worker' could not start ({error}). TensorFlow was "
            "already running: call glacier_mapping.distribute.training_strategy('multi-worker') "
            "first thing in the program, before any other TensorFlow work."
        ) from None


def _multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy with a ``reduce`` that Keras 3's ``fit`` can use.

    Keras 3 ``fit`` asks the strategy to reduce a nested batch (our dict inputs) and scalar logs
    along axis 0, which MultiWorkerMirroredStrategy refuses (keras-team/keras#20329, #20585).
    This subclass reduces leaf by leaf, and scalars without an axis; values are unchanged.
    """
    import tensorflow as tf

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: int | None = None) -> Any:  # noqa: ANN401
            reduce_leaf = super().reduce

            def leaf(per_replica: Any) -> Any:  # noqa: ANN401
                local = tf.convert_to_tensor(self.experimental_local_results(per_replica)[0])
                return reduce_leaf(reduce_op, per_replica, None if local.shape.rank == 0 else axis)

            return tf.nest.map_structure(leaf, value)

    return KerasMultiWorkerStrategy()


def _replica_devices() -> list[str]:
    """Every logical GPU, or every logical CPU device when there is no GPU."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def check_tf_config(tf_config: str | None) -> None:
    """Check a ``TF_CONFIG`` value for multi-worker training (cluster and this task).

    Args:
        tf_config: The JSON text of the ``TF_CONFIG`` environment variable (None if unset).

    Raises:
        ValueError: Naming ``TF_CONFIG``, what is wrong and an example of a valid value.
    """
    hint = f"Set TF_CONFIG on every machine, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'."
    if not tf_config:
        raise ValueError(
            f"training.distribute='multi-worker' needs the TF_CONFIG environment variable. {hint}"
        )
    try:
        config: Any = json.loads(tf_config)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}). {hint}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
        isinstance(hosts, list) and hosts and all(isinstance(h, str) for h in hosts)
        for hosts in cluster.values()
    ):
        raise ValueError(
            f"TF_CONFIG needs a 'cluster' mapping of job names to lists of 'host:port'. {hint}"
        )
    task = config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index") if isinstance(task, dict) else None
    if (
        kind not in cluster
        or isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[kind])
    ):
        raise ValueError(
            f"TF_CONFIG 'task' must name this machine: a 'type' among {sorted(cluster)} and an "
            f"'index' into that job's list; got {task!r}. {hint}"
        )
