"""Where the expensive per-product work runs: worker processes on this machine or a dask cluster.

One small interface (``Executor``): ``stream(fn, tasks)`` runs ``fn(task, emit)`` for every
task on the workers and yields, in this process, whatever the tasks ``emit``, as it arrives.
``ingest.publish.parts`` makes the tasks (parts of a write plan) and records what comes back;
nothing here knows about stores or plans.

DESIGN CHOICE: the workers never publish. The process that holds the store's transaction
(the committer) stays the only one that commits (DESIGN.md §5); workers decode, warp, mosaic
and encode, write their chunks into that transaction's staging area when they see the store,
and hand back key, size and digest (``ingest.publish.parts``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from ingest.compute.base import ComputeOptions, Emit, Executor, configure_worker, task_started

__all__ = ["ComputeOptions", "Emit", "Executor", "check_options", "configure_worker", "open_executor",
           "task_started"]


def check_options(options: ComputeOptions | None) -> None:
    """Refuse, before any work, options that exclude each other or need a library that is not
    installed (dask.distributed is the ``cluster`` extra)."""
    if options is None or options.in_process:
        return
    from ingest.errors import ConfigError, require_extra

    given = [o for o in ("workers", "scheduler", "local_cluster") if getattr(options, o)]
    if len(given) > 1:
        raise ConfigError("--workers, --scheduler and --local-cluster exclude each other; give one")
    if not options.workers:
        require_extra("distributed", "--scheduler/--local-cluster", "cluster")


@contextmanager
def open_executor(options: ComputeOptions | None) -> Iterator[Executor | None]:
    """The executor ``options`` asks for (None: work in this process), closed at the end."""
    if options is None or options.in_process:
        yield None
        return
    check_options(options)

    def start() -> Executor:
        if options.workers:
            from ingest.compute.local import LocalPool

            return LocalPool(options.workers)
        from ingest.compute.cluster import DaskExecutor

        return DaskExecutor(address=options.scheduler, local_workers=options.local_cluster)

    executor = _Lazy(start)
    try:
        yield executor
    finally:
        executor.close()


class _Lazy:
    """Starts the executor when first used: a run with nothing to write spawns no process
    and connects to no scheduler."""

    def __init__(self, start: Callable[[], Executor]) -> None:
        self._start, self._executor = start, None

    def _get(self) -> Executor:
        if self._executor is None:
            self._executor = self._start()
        return self._executor

    @property
    def workers(self) -> int:
        return self._get().workers

    @property
    def max_part_blocks(self) -> int | None:
        return self._get().max_part_blocks

    def describe(self) -> str:
        return self._get().describe()

    def stream(self, fn, tasks):
        return self._get().stream(fn, tasks)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
