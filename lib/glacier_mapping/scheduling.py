"""Where and when work runs: worker processes for independent tasks, and model reuse in one.

Workers: independent experiments run in worker processes, one TensorFlow runtime each.

Training the book's small models leaves part of a 2-core CPU idle: tracing a train step is
single-threaded Python, and convolutions over 64 px patches parallelise poorly. Each worker
therefore gets its share of the cores (``cores // training.parallel_experiments`` TensorFlow
threads): measured with two small GlaViTU models training side by side on 2 cores, a train
step took 0.20 s with one thread per worker against 0.30 s with TensorFlow's default of two
threads each (0.155 s for one model alone with two threads).

The thread count changes the floating-point sums of gradients, so a model's weights would
depend on whether it was trained in a worker or here. When the profile allows workers, every
task of :func:`run_groups` (training, bias optimisation) therefore runs in a worker, even a
single one, and results do not depend on which tasks the store already held (tested).

Model reuse: :class:`ModelPool` keeps the last few models built in this process, one per build
(architecture, inputs, preset), so the next training or prediction of the same build reuses the
model and its traced functions instead of building and tracing them again.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from glacier_mapping.workflow import Context, quiet_tensorflow

Item = TypeVar("Item")

#: Profile setting (under ``training``): experiments trained at the same time.
WORKERS_SETTING = "parallel_experiments"

#: Whether this process is one of :func:`run_groups`'s workers.
_IN_WORKER = False


def worker_count(context: Context) -> int:
    """Worker processes the profile allows (``training.parallel_experiments``, default 1)."""
    return context.profile.training.parallel_experiments


def uses_workers(context: Context) -> bool:
    """Whether :func:`run_groups` called here runs its tasks in worker processes."""
    return worker_count(context) > 1 and not _IN_WORKER


def worker_threads(context: Context) -> int:
    """TensorFlow threads of each worker: its share of this machine's cores."""
    return max(1, available_cores() // worker_count(context))


def available_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_groups(
    context: Context,
    task: Callable[[Context, Item], None],
    groups: Sequence[Sequence[Item]],
    describe: Callable[[Item], str] = str,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run ``task(context, item)`` for every item, a group at a time per worker process.

    Items of one group run in order in one process (so they can share what that process
    built, e.g. traced train steps); groups run in parallel on up to :func:`worker_count`
    processes of :func:`worker_threads` TensorFlow threads each, or in this process when the
    profile allows one worker (or this is a worker). ``task`` must be a module-level
    function: it is sent to the workers by name. What a group prints is shown here, whole and
    in group order, once the group is done. ``meanwhile`` runs here while the workers run
    (after the groups, without workers).

    Raises:
        RuntimeError: When a worker process dies (e.g. out of memory), naming its items.
        Exception: Whatever ``task`` raised, as raised in the worker.
    """
    if not uses_workers(context) or not groups:
        for group in groups:
            for item in group:
                task(context, item)
        if meanwhile is not None:
            meanwhile()
        return
    workers = min(worker_count(context), len(groups))
    spawn = multiprocessing.get_context("spawn")  # never fork a process running TensorFlow
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_start_worker,
                             initargs=(worker_threads(context),)) as pool:
        futures = [pool.submit(_run_group, context, task, list(group)) for group in groups]
        if meanwhile is not None:
            meanwhile()
        for future, group in zip(futures, groups, strict=True):
            try:
                printed = future.result()
            except BrokenProcessPool as error:
                names = ", ".join(describe(item) for item in group)
                raise RuntimeError(
                    f"A worker process died while running {names} (out of memory?). Set "
                    f"training.{WORKERS_SETTING}: 1 in the profile to run one at a time."
                ) from error
            print(printed, end="", flush=True)


def _start_worker(threads: int) -> None:
    """Worker side, once: quiet TensorFlow and give it ``threads`` threads."""
    global _IN_WORKER
    _IN_WORKER = True
    quiet_tensorflow()
    import tensorflow as tf  # in the worker only: the parent may not need TensorFlow

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _run_group(context: Context, task: Callable[[Context, Item], None], group: list[Item]) -> str:
    """Worker side: run a group's items in order and return what they printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for item in group:
            task(context, item)
    return printed.getvalue()


class ModelPool:
    """The last few models built in this process, one per build, for reuse.

    A build is what a model's variables depend on (architecture, inputs, preset). Each entry
    remembers the key of the model artifact whose weights it holds, if any, so a model that
    already holds the weights asked for is not even reloaded.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: dict[Any, tuple[Any, str | None]] = {}

    def take(self, build: Any) -> tuple[Any, str | None]:  # noqa: ANN401
        """Remove and return ``(model, holds)`` of a build, or ``(None, None)``."""
        return self._models.pop(build, (None, None))

    def keep(self, build: Any, model: Any, holds: str | None = None) -> None:  # noqa: ANN401
        """Keep ``model`` as the most recent of its build, forgetting the oldest beyond size."""
        self._models[build] = (model, holds)
        while len(self._models) > self.size:
            self._models.pop(next(iter(self._models)))
