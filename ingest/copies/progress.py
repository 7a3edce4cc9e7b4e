"""Running a dask computation with progress: a tqdm bar on a terminal, plain log lines
otherwise; on the local threaded scheduler or a ``dask.distributed`` cluster."""
from __future__ import annotations

import logging
import time

from dask.callbacks import Callback

from ingest.errors import ConfigError, require_extra

log = logging.getLogger("s2ingest")


class _TaskProgress(Callback):
    """Counts finished tasks of the local scheduler into a tqdm bar or log lines."""

    def __init__(self, desc: str, bar: bool) -> None:
        super().__init__()
        self.desc, self.bar_wanted = desc, bar
        self.bar = None
        self.total = self.done = 0
        self._last_log = 0.0

    def _start_state(self, dsk, state) -> None:
        from tqdm.auto import tqdm

        self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        if self.bar_wanted:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="task", leave=False)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.monotonic() - self._last_log > 10:
            self._last_log = time.monotonic()
            log.info("%s: %d of %d tasks", self.desc, self.done, self.total)

    def _finish(self, dsk, state, errored) -> None:
        if self.bar is not None:
            self.bar.close()
        log.info("%s: %d tasks done", self.desc, self.done)


def compute_with_progress(*collections, progress: bool = False, scheduler: str | None = None,
                          desc: str = "compute"):
    """``dask.compute(*collections)`` locally (threads) or on the cluster at ``scheduler``."""
    import dask

    if scheduler:
        require_extra("distributed", "--scheduler", "cluster")
        from distributed import Client, progress as dist_progress
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler {scheduler}: {exc}") from None
        with client:
            futures = client.compute(list(collections))
            if progress:
                dist_progress(futures)
            return client.gather(futures)
    with _TaskProgress(desc, progress):
        return dask.compute(*collections, scheduler="threads")
