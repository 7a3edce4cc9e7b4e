"""The compute interface every executor implements, and what runs in each worker process."""
from __future__ import annotations

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
