"""Independent experiments in worker processes, one TensorFlow runtime each.

Training the book's small models leaves part of a 2-core CPU idle: tracing a train step is
single-threaded Python, and convolutions over 64 px patches parallelise poorly. Measured with
four GlaViTU ablation models (3 x 25 steps each, before tf.data's autotune stalls were removed,
see ``data.patches``): one after another in one process 160 s; two at a time in two processes
110 s. Workers use TensorFlow's default threading, like the main process, and results do not
depend on which process trained a model (tested). Work that already keeps both cores busy
gains little: chapter 06's two bias optimisations took 92 s side by side against about 55 s
each one after another.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from glacier_mapping.workflow import Context

Item = TypeVar("Item")

#: Profile setting (under ``training``): experiments trained at the same time.
WORKERS_SETTING = "parallel_experiments"


def worker_count(context: Context) -> int:
    """Worker processes the profile allows (``training.parallel_experiments``, default 1)."""
    return int(context.profile.training.get(WORKERS_SETTING, 1))


def run_groups(
    context: Context,
    task: Callable[[Context, Item], None],
    groups: Sequence[Sequence[Item]],
    describe: Callable[[Item], str] = str,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run ``task(context, item)`` for every item, a group at a time per worker process.

    Items of one group run in order in one process (so they can share what that process
    built, e.g. traced train steps); groups run in parallel on up to
    :func:`worker_count` processes, or in this process when that is 1 or there is only one
    group. ``task`` must be a module-level function: it is sent to the workers by name. What a
    group prints is shown here, whole and in group order, once the group is done.
    ``meanwhile`` runs here while the workers run (after the groups, without workers).

    Raises:
        RuntimeError: When a worker process dies (e.g. out of memory), naming its items.
        Exception: Whatever ``task`` raised, as raised in the worker.
    """
    workers = min(worker_count(context), len(groups))
    if workers <= 1:
        for group in groups:
            for item in group:
                task(context, item)
        if meanwhile is not None:
            meanwhile()
        return
    spawn = multiprocessing.get_context("spawn")  # never fork a process running TensorFlow
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
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


def _run_group(context: Context, task: Callable[[Context, Item], None], group: list[Item]) -> str:
    """Worker side: run a group's items in order and return what they printed."""
    from glacier_mapping.workflow import quiet_tensorflow

    quiet_tensorflow()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for item in group:
            task(context, item)
    return printed.getvalue()
