"""Checks before a command touches anything, and no litter after a command that failed.

* The store location itself is checked by the store owner (``ingest.store.check_location``:
  a file, or a folder of other files, is refused with exit 6 before anything is created).
* ``no_litter``: around a writing command; if it fails, what it created (a new store that
  holds no data, a new SQLite catalog that records no publish, a new product cache) is removed,
  so a failed first run leaves the disk as it was. Whatever it fails with, the leases this
  process holds are given back, so ``status`` and the next run see no crashed worker.
"""
from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ingest.config import Settings
from ingest.errors import S2IngestError

log = logging.getLogger(__name__)


def _catalog_file(settings: Settings) -> Path | None:
    from catalog import sqlite_file

    return sqlite_file(settings.db_url)


def _in_catalog(settings: Settings, work, *, missing: int, failing: int | None = None) -> int:
    """``work(session)`` on the existing catalog; ``missing`` when there is none, ``failing``
    (if given) when the work itself fails with an s2ingest error."""
    from catalog import open_existing_catalog, session_scope

    try:
        engine = open_existing_catalog(settings.db_url)
    except S2IngestError:
        return missing
    try:
        with session_scope(engine) as s:
            return work(s)
    except S2IngestError:
        if failing is None:
            raise
        return failing
    finally:
        engine.dispose()


def _publishes(settings: Settings) -> int:
    """How many publishes the catalog records (-1: cannot tell, so keep everything)."""
    from sqlalchemy import func, select

    from catalog import Publish

    return _in_catalog(settings, lambda s: int(s.scalar(select(func.count()).select_from(Publish)) or 0),
                       missing=0, failing=-1)


def release_leases(settings: Settings, worker: str) -> int:
    """Give back every lease ``worker`` holds in the catalog (0 when there is no catalog)."""
    from catalog import release_all

    return _in_catalog(settings, lambda s: len(release_all(s, worker)), missing=0)


@contextmanager
def no_litter(settings: Settings, worker: str | None = None) -> Iterator[None]:
    """Release ``worker``'s leases on any way out; on an S2IngestError also remove what this
    command created and holds nothing (see module docstring)."""
    # DESIGN CHOICE: only a local store folder is removed here; an s3:// store's first commit
    # removes what it wrote itself (Transaction), and its lease object goes with its release.
    store = None if isinstance(settings.store, str) else Path(settings.store)
    db_file = _catalog_file(settings)
    cache = Path(settings.cache_dir)
    existed = {store: store is not None and store.exists(), cache: cache.exists()}
    db_existed = db_file is not None and db_file.exists()
    try:
        yield
    except BaseException as exc:
        if worker is not None:
            try:
                n = release_leases(settings, worker)
                if n:
                    log.info("released %d leases of %s", n, worker)
            except S2IngestError as rel_exc:  # the catalog is the problem: report the first error
                log.debug("could not release leases: %s", rel_exc)
        if isinstance(exc, S2IngestError):
            _clean(store, existed[store], cache, existed[cache], db_file, db_existed, settings)
        raise


def _clean(store: Path | None, store_existed: bool, cache: Path, cache_existed: bool,
           db_file: Path | None, db_existed: bool, settings: Settings) -> None:
    if _publishes(settings) != 0:  # something was published: keep it all
        return
    if db_file is not None and not db_existed and db_file.exists():
        for f in db_file.parent.glob(db_file.name + "*"):  # with -wal / -shm
            f.unlink(missing_ok=True)
    if store is not None and not store_existed and store.is_dir():
        shutil.rmtree(store, ignore_errors=True)
    if not cache_existed and cache.is_dir() and not any(cache.rglob("*.zip")):
        shutil.rmtree(cache, ignore_errors=True)
