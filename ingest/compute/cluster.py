"""Work on a dask.distributed cluster: ``--scheduler tcp://HOST:PORT`` or ``--local-cluster N``."""
from __future__ import annotations

import uuid
from typing import Any, Callable, Iterator, Sequence

from ingest.errors import ComputeError, ConfigError, require_extra
from ingest.compute.base import Emit, configure_worker, task_started

# DESIGN CHOICE: a dask task returns its whole result (no streaming back to the client), so a
# part is capped at this many blocks (chunk rows): a worker then holds at most 4 rows of
# encoded chunks; dask spills them to disk under memory pressure and moves them to the
# committer once.
MAX_PART_BLOCKS = 4
CONNECT_TIMEOUT = "20s"


def _collect(fn: Callable[[Any, Emit], None], task: Any) -> list:
    configure_worker(1)  # here, not at connect time: a worker restarted after a loss is new
    out: list = []
    task_started()
    fn(task, out.append)
    return out


class DaskExecutor:
    """Tasks on a dask.distributed cluster; the client (this process) stays the committer.

    A worker lost mid-task (killed, out of memory, machine gone) is not an error here: the
    scheduler runs its tasks again on another worker (``distributed.scheduler.allowed-failures``,
    3 by default); tasks are pure functions of their inputs, so a rerun gives the same bytes.
    """

    max_part_blocks = MAX_PART_BLOCKS

    def __init__(self, address: str | None = None, local_workers: int | None = None) -> None:
        require_extra("distributed", "--scheduler/--local-cluster", "cluster")
        from distributed import Client, LocalCluster

        self._cluster = None
        if address:
            if "://" not in address:
                raise ConfigError(f"--scheduler wants an address like tcp://HOST:8786, not {address!r}")
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ComputeError(f"cannot reach the dask scheduler at {address}: {exc}") from exc
            self._where = address
        else:
            n = int(local_workers or 1)
            # processes: decoding holds the GIL in parts; one thread each (see configure_worker)
            self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self.client = Client(self._cluster, set_as_default=False)
            self._where = f"local cluster of {n}"
        self.workers = max(1, sum(self.client.nthreads().values()))

    def describe(self) -> str:
        return f"dask {self._where}, {self.workers} threads"

    def stream(self, fn: Callable[[Any, Emit], None], tasks: Sequence[Any]) -> Iterator[Any]:
        from distributed import as_completed

        if not tasks:
            return
        run = uuid.uuid4().hex[:8]
        keys = [f"s2ingest-part-{run}-{i}" for i in range(len(tasks))]
        futures = self.client.map(_collect, [fn] * len(tasks), tasks, key=keys, pure=False)
        try:
            for future in as_completed(futures, loop=self.client.loop):
                try:
                    items = future.result()
                except Exception as exc:  # noqa: BLE001
                    from distributed.scheduler import KilledWorker

                    if isinstance(exc, KilledWorker):
                        raise ComputeError(f"dask workers kept dying on {future.key}; nothing was "
                                           "published") from exc
                    raise
                future.release()
                yield from items
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
