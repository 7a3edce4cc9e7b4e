"""Where the expensive per-product work runs: worker processes on this machine or a dask cluster.

One small interface (``Executor``): ``stream(fn, tasks)`` runs ``fn(task, emit)`` for every
task on the workers and yields, in this process, whatever the tasks ``emit``, as it arrives.
``ingest.publish.write`` makes the tasks (parts of a write plan) and stages what comes back; nothing
here knows about stores or plans.

DESIGN CHOICE: the workers never write to the store. The process that holds the store's
transaction (the committer) stays the only writer (DESIGN.md §5); workers decode, warp,
mosaic and encode, and hand back encoded chunks.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

Emit = Callable[[Any], None]


class Executor(Protocol):
    workers: int  # tasks that run at once
    max_part_blocks: int | None  # the most blocks a task may hold in its result (None: streamed)

    def stream(self, fn: Callable[[Any, Emit], None], tasks: Sequence[Any]) -> Iterator[Any]:
        """Run ``fn(task, emit)`` for each task on the workers; yield what they emit."""

    def describe(self) -> str:
        """A few words for progress lines ("2 worker processes")."""

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class ComputeOptions:
    """How ``sync`` runs the work: in this process (default), a local process pool
    (``workers``), a dask scheduler (``scheduler`` address) or a local dask cluster."""

    workers: int | None = None
    scheduler: str | None = None
    local_cluster: int | None = None

    @property
    def in_process(self) -> bool:
        return not (self.workers or self.scheduler or self.local_cluster)


def configure_worker(threads: int = 1) -> None:
    """Run in every worker process: one worker uses ``threads`` cores.

    DESIGN CHOICE: GDAL's OpenJPEG decoder and Blosc would each start a thread per core in
    every worker; with one process per core that oversubscribes the machine, so a worker
    decodes and compresses with ``threads`` threads and parallelism comes from the processes.
    """
    import numcodecs.blosc

    from ingest.warping.warp import GDAL_ENV

    GDAL_ENV["GDAL_NUM_THREADS"] = str(threads)
    numcodecs.blosc.set_nthreads(threads)


def task_started() -> None:
    """Called by every executor as a task starts. Tests set ``S2INGEST_TEST_TASK_DELAY``
    (seconds) to hold tasks long enough to kill a worker in the middle of one."""
    import os
    import time

    delay = os.environ.get("S2INGEST_TEST_TASK_DELAY")
    if delay:
        time.sleep(float(delay))


@contextmanager
def open_executor(options: ComputeOptions | None) -> Iterator[Executor | None]:
    """The executor ``options`` asks for (None: work in this process), closed at the end."""
    if options is None or options.in_process:
        yield None
        return
    from ingest.errors import ConfigError

    given = [o for o in ("workers", "scheduler", "local_cluster") if getattr(options, o)]
    if len(given) > 1:
        raise ConfigError("--workers, --scheduler and --local-cluster exclude each other; give one")

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
