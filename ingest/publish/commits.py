"""Commits besides the sync's: the new cube, overviews, the quality atlas, reference layers
(mirror copies: ``ingest.publish.copy``).

Each is made by its own package in one store transaction (``ingest.publish.engine.Cube``,
``ingest.overviews``, ``ingest.quality``, ``ingest.layers``) and recorded here in the cube's catalog
(``ingest.publish.record``), so every store version has its publish row. ``catalog`` is an
engine or a URL (a SQLite file that does not exist: no catalog, e.g. a mirror copy: nothing is
recorded), or None.

A rerun with nothing to change commits nothing (no new version) and records, if the catalog
missed it, the version that last wrote the group: so a run killed after its store commit is
completed by running it again.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import Engine

from catalog import session_scope

from ingest.errors import CatalogError, StoreError
from ingest.grid import CubeGrid
from ingest.store import CubeStore, group_path
from ingest.store import DEFAULT_LOCK_TIMEOUT
from ingest.publish.record import catalog_scope, record_commit, repair_versions

if TYPE_CHECKING:  # the pipeline is loaded by the commits that run it, not by a mirror's record
    from ingest.publish.engine import Cube

Catalog = Engine | str | None


@dataclass(frozen=True)
class Published:
    """One group's commit (or the lack of one)."""

    group: str  # "S2/R051", "NL/BRP"
    version: int  # the new version; unchanged: the version that last wrote the group
    changed: bool  # False: nothing to change, no new version
    recorded: bool  # a catalog recorded (or already had) the version
    count: int = 0  # what was written: level chunks (overviews), time steps (quality)


def worker(what: str) -> str:
    """Who recorded a commit, e.g. ``overviews@host:1234``."""
    return f"{what}@{socket.gethostname()}:{os.getpid()}"


def _open(store: CubeStore | str | Path) -> CubeStore:
    return store if isinstance(store, CubeStore) else CubeStore.open(store)


def _record(catalog: Catalog, store: CubeStore, group: str, version: int, what: str, **kwargs) -> bool:
    if not version:
        return False
    return record_commit(catalog, store, version, group=f"/{group}", worker=worker(what), **kwargs)


def _groups(store: CubeStore, orbit: int | None) -> list[str]:
    """The orbit groups of ``store`` (only ``orbit``'s when given); a StoreError if none."""
    from ingest.store.verify import imagery_groups

    if orbit is not None:
        if not store.group_exists(group_path(orbit)):
            raise StoreError(f"{store.url} has no group /{group_path(orbit)}")
        return [group_path(orbit)]
    groups = imagery_groups(store)
    if not groups:
        raise StoreError(f"{store.url} has no imagery group yet; run `s2ingest sync` first")
    return groups


def create_cube(cube: Cube, *, catalog: Catalog = None) -> CubeStore:
    """``Cube.ensure``: the store with the orbit's group (one commit when anything was
    missing), recorded in ``catalog``, with every other store version it misses (``init``
    run again after a crash, or on a catalog created after the store)."""
    with catalog_scope(catalog) as engine:
        before = cube.open().version()  # 0: no store yet
        store = cube.ensure()
        if engine is not None:
            if store.version() != before:
                _record(engine, store, cube.group, store.version(), "init")
            with session_scope(engine) as s:
                repair_versions(s, store, worker=worker("init"))
    return store


def publish_overviews(store: CubeStore | str | Path, *, orbit: int | None = None, catalog: Catalog = None,
                      progress: bool = False, threads: int = 2,
                      lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> list[Published]:
    """Build the overview levels of every orbit group (or ``orbit``'s), one commit per group,
    each recorded in ``catalog``. A group whose levels are already what a build makes gets
    no commit.

    DESIGN CHOICE: one commit per group, so every version names the one group it wrote (the
    catalog's publish row has one group; a later ``sync`` reconciles that group's version).
    """
    from ingest.overviews import add_overviews

    store = _open(store)
    out = []
    for group in _groups(store, orbit):
        with store.transaction(timeout=lock_timeout) as tx:
            n = add_overviews(tx, store.grid, group, progress=progress, threads=threads)
            report = tx.commit() if n is not None else None
        version = report.version if report is not None else store.published(group).group_version
        recorded = _record(catalog, store, group, version, "overviews")
        out.append(Published(group, version, report is not None, recorded, n or 0))
    return out


def publish_quality(store: CubeStore | str | Path, group: str, *, catalog: Catalog = None,
                    resolution: int | None = None, progress: Callable[[int, int], None] | None = None,
                    lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Published:
    """Recompute the quality atlas of ``group`` in one commit (none if nothing changes),
    recorded in ``catalog``."""
    from ingest.quality.group import rebuild_quality

    store = _open(store)
    report = rebuild_quality(store, group, resolution=resolution, progress=progress,
                             lock_timeout=lock_timeout)
    state = store.published(group)
    version = report.version if report is not None else state.group_version
    recorded = _record(catalog, store, group, version, "quality")
    return Published(group, version, report is not None, recorded, state.length)


def publish_layer(store: str | Path, group: str, source: str | Path, *, catalog: Catalog = None,
                  edition: int, attribute: str | None, variable: str | None = None,
                  force: bool = False, grid: CubeGrid | None = None,
                  name_attribute: str | None = None, progress: bool = False) -> list:
    """``ingest.layers.add_layer`` and its catalog rows (the version's publish row, one layer
    row per variable); the same file again changes nothing in the store and records what
    the catalog missed. Returns the ``LayerRecord``s."""
    from ingest.grid import NL_GRID
    from ingest.layers import add_layer

    records = add_layer(store, group, source, edition=edition, attribute=attribute, variable=variable,
                        force=force, grid=grid or NL_GRID, name_attribute=name_attribute,
                        progress=progress)
    first = records[0]
    try:
        _record(catalog, CubeStore.open(store), first.group, first.version, "layers",
                n_chunks_written=sum(r.n_chunks for r in records), layers=records)
    except CatalogError as exc:
        raise CatalogError(f"{exc} (the layer is in the store; run the same command again "
                           "to record it)") from exc
    return records
