"""The one place that records a commit of the store in the catalog (DESIGN.md §5).

Every commit that makes a new store version gets its publish row, with the summary of the
version's manifest (parent, sha256, keys, changes) and, for reference layers, the layer
rows: imagery (``sync``), reference layers, overviews and the quality atlas alike. Library
functions that publish with a catalog call ``record_commit`` (``ingest.publish.commits``) or,
inside their own catalog transaction, ``record_in`` (``ingest.publish.sync``); the command
line never records anything itself.

The store is the truth: a version the catalog misses (a run killed between its store commit
and its catalog commit, a commit made before the catalog existed) is recorded afterwards by
``repair_versions``, which every ``sync`` runs first. Recording is idempotent: a row that
exists is kept (its summary must agree), so a rerun, a repair and a late recorder never clash.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from catalog import (
    Publish, TimeStepRecord, open_catalog, record_layer, record_publish, record_version, session_scope,
)
from ingest.errors import StoreError
from ingest.publish.identity import adopt_in
from ingest.store import CommitReport, CubeStore, manifest_key
from ingest.store.bookkeeping.codec import root_key
from ingest.store.layout import GROUP_VERSION_ATTR, is_metadata

log = logging.getLogger(__name__)


class LayerRow(Protocol):
    """What a layer row needs (``ingest.layers.LayerRecord`` has it)."""

    group: str
    variable: str
    edition: int
    source_name: str
    sha256: str
    attribute: str | None


def existing_catalog(url: str) -> Engine | None:
    """The catalog at ``url`` if it exists; None for a SQLite file not created yet."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
            and not Path(u.database).exists():
        return None
    return open_catalog(url, create=False)


def catalog_engine(catalog: Engine | str | None) -> Engine | None:
    """An engine from an engine or a URL; None when there is no catalog (nothing to record)."""
    if catalog is None or isinstance(catalog, Engine):
        return catalog
    return existing_catalog(str(catalog))


@contextmanager
def catalog_scope(catalog: Engine | str | None) -> Iterator[Engine | None]:
    """``catalog_engine`` for one piece of work: an engine made here from a URL is disposed at
    the end (its pooled connections closed: a SQLite catalog's -wal and -shm files go with
    them); an engine given by the caller stays the caller's."""
    engine = catalog_engine(catalog)
    try:
        yield engine
    finally:
        if engine is not None and engine is not catalog:
            engine.dispose()


def record_commit(catalog: Engine | str | None, store: CubeStore, commit: CommitReport | int, *,
                  group: str, worker: str, n_chunks_written: int | None = None,
                  layers: Sequence[LayerRow] = ()) -> bool:
    """Record ``commit`` (its report, or a version number) of ``store`` in ``catalog`` (an
    engine, or a URL: a SQLite file that does not exist is no catalog), in one catalog
    transaction. Returns False when there was no catalog to record in (e.g. a mirror copy)."""
    with catalog_scope(catalog) as engine:
        if engine is None:
            return False
        with session_scope(engine) as s:
            record_in(s, store, commit, group=group, worker=worker, n_chunks_written=n_chunks_written,
                      layers=layers)
    return True


def record_in(session: Session, store: CubeStore, commit: CommitReport | int, *, group: str,
              worker: str | None, product_ids: Iterable[int] = (),
              time_steps: Iterable[TimeStepRecord] = (), n_chunks_written: int | None = None,
              layers: Sequence[LayerRow] = ()) -> None:
    """``record_commit`` inside the caller's catalog transaction: the publish row of the
    version (products published, time steps), its manifest summary, the layer rows.

    ``group`` is the group the commit wrote ("/S2/R051", "/NL/BRP"). A publish row the
    catalog already has for this version (a rerun, or a repair by another process) is kept;
    its products and time steps are then left to ``reconcile_published``.
    """
    version = commit if isinstance(commit, int) else commit.version
    adopt_in(session, store.url)  # a new catalog records the identity of its store
    m = _manifest(store, version)
    if _row(session, version) is None:
        written = n_chunks_written
        if written is None:
            written = _chunks_written(m) if m is not None else 0
        summary = None
        if m is not None:
            summary = {"parent": m.get("parent"), "sha256": store.manifest_sha256(version),
                       "n_keys": len(m["keys"]),
                       "n_changes": sum(1 for k in m["changes"] if not is_metadata(k))}
        record_publish(session, group=group, version=version, product_ids=list(product_ids),
                       worker=worker or "unknown", n_chunks_written=written, time_steps=time_steps,
                       manifest_path=_bookkeeping_path(m, version), manifest=summary)
    if m is not None:
        record_summary(session, store, version, group, worker=worker, manifest=m)
    for r in layers:
        record_layer(session, group=r.group, name=r.variable, edition=str(r.edition),
                     source_name=r.source_name, sha256=r.sha256, version=version, attribute=r.attribute)


def record_summary(session: Session, store: CubeStore, version: int, group: str, *,
                   worker: str | None, manifest: dict | None = None) -> None:
    """The manifest summary of ``version`` (creates its publish row if missing); nothing for
    a store written before manifests, or a version past the kept history."""
    m = manifest if manifest is not None else _manifest(store, version)
    if m is None:
        return
    record_version(session, version, m.get("parent"), store.manifest_sha256(version), len(m["keys"]),
                   m["changes"], group, worker=worker)


def repair_versions(session: Session, store: CubeStore, *, worker: str | None) -> list[int]:
    """Record every version the store keeps (its manifests) that has no publish row, with its
    summary, flagged ``reconciled``; returns those versions. The group of a repaired version
    is the one whose version attribute names it ("/" when none does, e.g. the commit that
    created the store)."""
    kept = store.manifest_versions()
    if not kept:
        return []
    recorded = set(session.scalars(select(Publish.version).where(Publish.version.in_(kept))))
    repaired = []
    for version in kept:
        if version in recorded:
            continue
        m = _manifest(store, version)
        if m is None:
            continue
        record_summary(session, store, version, _group_of(store, version), worker=worker, manifest=m)
        # flagged only if this repair wrote the row (not its own writer, recording meanwhile)
        session.execute(update(Publish).where(Publish.version == version, Publish.worker == worker)
                        .values(reconciled=True).execution_options(synchronize_session=False))
        repaired.append(version)
    if repaired:
        log.warning("recorded store version(s) %s, which the catalog missed", repaired)
    return repaired


def _row(session: Session, version: int) -> Publish | None:
    return session.scalar(select(Publish).where(Publish.version == version))


def _manifest(store: CubeStore, version: int) -> dict | None:
    try:
        return store.manifest(version)
    except StoreError:  # a store written before manifests, or a version past the history
        return None


def _bookkeeping_path(m: dict | None, version: int) -> str | None:
    """Where the version's bookkeeping starts: its root (format 2) or its manifest (format 1)."""
    if m is None:
        return None
    return root_key(version) if m.get("format") == 2 else manifest_key(version)


def _chunks_written(m: dict) -> int:
    return sum(1 for k, v in m["changes"].items() if v is not None and not is_metadata(k))


def _group_of(store: CubeStore, version: int) -> str:
    """The group whose version attribute is ``version`` in that version's metadata."""
    try:
        docs = store.metadata_snapshot(version)
    except StoreError:
        return "/"
    found = []
    for key, raw in docs.items():
        if key.endswith("/.zattrs") and json.loads(raw).get(GROUP_VERSION_ATTR) == version:
            found.append(key[: -len("/.zattrs")])
    return "/" + sorted(found)[0] if found else "/"
