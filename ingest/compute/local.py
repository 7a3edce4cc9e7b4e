"""Worker processes on this machine: ``s2ingest sync --workers N``."""
from __future__ import annotations

import multiprocessing
import queue
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from ..errors import ComputeError
from . import Emit, configure_worker, task_started

_QUEUE: Any = None  # in a worker: where its tasks emit


def _init(results, threads: int) -> None:
    global _QUEUE
    _QUEUE = results
    # Ctrl-C goes to the whole process group; the committer stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_worker(threads)


def _run(fn: Callable[[Any, Emit], None], index: int, task: Any) -> None:
    results = _QUEUE
    task_started()
    fn(task, lambda item: results.put(("item", index, item)))
    results.put(("done", index, None))


class LocalPool:
    """``workers`` processes (spawned, one core each) that stream their results back.

    DESIGN CHOICE: a task emits its result block by block into one bounded queue instead of
    returning it at the end: a worker holds one block of output at a time and blocks when the
    committer falls behind, so memory stays bounded however large a part is, and a part need
    not be cut (each cut decodes JP2 strips twice).
    """

    max_part_blocks = None

    def __init__(self, workers: int, threads: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        # DESIGN CHOICE: spawn, not fork: the committer may hold GDAL threads, open files and
        # a database connection, none of which survive a fork safely.
        ctx = multiprocessing.get_context("spawn")
        self._results = ctx.Queue(maxsize=2 * workers)
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                         initargs=(self._results, threads))
        self._broken = False

    def describe(self) -> str:
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''}"

    def stream(self, fn: Callable[[Any, Emit], None], tasks: Sequence[Any]) -> Iterator[Any]:
        futures: list[Future] = [self._pool.submit(_run, fn, i, t) for i, t in enumerate(tasks)]
        done: set[int] = set()
        finished = False
        try:
            while len(done) < len(futures):
                try:
                    kind, index, item = self._results.get(timeout=0.5)
                except queue.Empty:
                    self._raise_failed(futures)
                    continue
                if kind == "done":
                    done.add(index)
                else:
                    yield item
            finished = True
        finally:
            if not finished:  # an error here or in a worker, or the consumer stopped
                self._abandon(futures)

    def _raise_failed(self, futures: list[Future]) -> None:
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    self._broken = True
                    raise ComputeError("a worker process died (killed, or out of memory); "
                                       "nothing was published") from exc
                raise exc

    def _abandon(self, futures: list[Future]) -> None:
        """Cancel what has not started; let running tasks finish (they may be blocked on the
        full queue, so keep draining it) unless the pool is going down anyway."""
        for f in futures:
            f.cancel()
        while any(f.running() for f in futures) and not self._broken:
            try:
                self._results.get(timeout=0.2)
            except queue.Empty:
                pass
            except (EOFError, OSError):
                break

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._results.close()
        self._results.join_thread()
