"""Worker processes on this machine: ``s2ingest sync --workers N``."""
from __future__ import annotations

import multiprocessing
import queue
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from ingest.errors import ComputeError, ProductError
from ingest.compute.base import Emit, configure_worker, task_started

_QUEUE: Any = None  # in a worker: where its tasks emit


def _init(results, threads: int) -> None:
    global _QUEUE
    _QUEUE = results
    # Ctrl-C goes to the whole process group; the committer stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_worker(threads)


def _run(fn: Callable[[Any, Emit], None], index: tuple[int, int], task: Any) -> None:
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
        self.workers, self._threads = workers, threads
        # DESIGN CHOICE: spawn, not fork: the committer may hold GDAL threads, open files and
        # a database connection, none of which survive a fork safely.
        self._ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._results = self._ctx.Queue(maxsize=2 * self.workers)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=_init,
                                         initargs=(self._results, self._threads))
        self._broken = False
        self._runs = 0

    def describe(self) -> str:
        return f"{self.workers} worker process{'es' if self.workers > 1 else ''}"

    def stream(self, fn: Callable[[Any, Emit], None], tasks: Sequence[Any]) -> Iterator[Any]:
        if self._broken:  # a previous run was stopped: fresh processes
            self._start()
        self._runs += 1  # messages of an earlier, stopped stream are left in the queue: skip them
        run = self._runs
        futures: list[Future] = [self._pool.submit(_run, fn, (run, i), t) for i, t in enumerate(tasks)]
        done: set[int] = set()
        try:
            while len(done) < len(futures):
                try:
                    kind, index, item = self._results.get(timeout=0.5)
                except queue.Empty:
                    self._raise_failed(futures)
                    continue
                if index[0] != run:
                    continue
                if kind == "done":
                    done.add(index[1])
                else:
                    yield item
        except ProductError:
            # DESIGN CHOICE: a bad product found by a worker: the caller rejects it and runs
            # the rest again on this pool, so let the other running tasks end (draining their
            # output) instead of killing the processes.
            self._drain(futures)
            raise
        except BaseException:  # Ctrl-C, a store error while staging, a lost worker: stop now
            self._terminate(futures)
            raise

    def _raise_failed(self, futures: list[Future]) -> None:
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                exc = f.exception()
                if isinstance(exc, BrokenProcessPool):
                    raise ComputeError("a worker process died (killed, or out of memory); "
                                       "nothing was published") from exc
                raise exc

    def _drain(self, futures: list[Future]) -> None:
        for f in futures:
            f.cancel()
        while any(f.running() for f in futures):
            try:
                self._results.get(timeout=0.2)
            except queue.Empty:
                pass

    def _terminate(self, futures: list[Future]) -> None:
        for f in futures:
            f.cancel()
        # ProcessPoolExecutor has no public way to stop a running task: end its processes
        for p in list((getattr(self._pool, "_processes", None) or {}).values()):
            p.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._broken = True

    def close(self) -> None:
        if not self._broken:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._results.close()
        self._results.join_thread()
