"""A store and its catalog know each other: the store's identity, recorded on both sides.

The store writes a random identity into ``.s2ingest/id.json`` with its first commit (a store
from before identities gets one with its next commit); the catalog records it the first time
the two are used together. ``check_pair`` runs before any work in every command that opens a
store and its catalog: a catalog that names another store is refused with one line
(``CatalogMismatchError``, exit 3), as is a catalog that names a store to a location whose
store has no identity (a new store, or a copy, given the catalog of another store). A deleted
or lost catalog is made again from the store with ``ingest.publish.rebuild``.
"""
from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from catalog.db import session_scope
from catalog.identity import record_store, recorded_store
from ingest.errors import CatalogMismatchError
from ingest.store.backends import backend_for
from ingest.store.layout import ID_FILE


def store_identity(location: str | Path) -> str | None:
    """The identity of the store at ``location``; None when it has none (no cube there yet,
    or a cube from before identities)."""
    import json

    from ingest.errors import StoreError

    backend = backend_for(location)
    raw = backend.get(ID_FILE)
    if raw is None:
        return None
    try:
        return str(json.loads(raw)["store_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{backend.url}/{ID_FILE} is damaged: {exc}") from exc


def _where(location: str | Path) -> str:
    text = str(location)
    return text if "://" in text else str(Path(text).resolve())


def check_pair(location: str | Path, engine: Engine | None, *, adopt: bool = True,
               catalog_name: str = "the catalog") -> None:
    """Refuse (``CatalogMismatchError``) a catalog that describes another store than the one
    at ``location``; with ``adopt``, a catalog that names no store yet records this one's
    identity (when the store has one). Nothing to check without a catalog (``engine`` None)."""
    if engine is None:
        return
    mine = store_identity(location)
    with session_scope(engine) as s:
        row = recorded_store(s)
        if row is None:
            if adopt and mine is not None:
                record_store(s, mine, _where(location))
            return
        if row.store_id == mine:
            return
    theirs = f"store {row.store_id}" + (f" ({row.location})" if row.location else "")
    if mine is None:
        what = (f"{location} has no store identity yet (a new store, a copy, or one written "
                "before identities)")
    else:
        what = f"{location} is store {mine}"
    raise CatalogMismatchError(
        f"{catalog_name} belongs to {theirs}, but {what}: give this store's own catalog "
        f"(--db), or make one from the store with `s2ingest db rebuild --store {location} --db URL`")


def adopt_in(session: Session, location: str | Path) -> None:
    """Inside a catalog transaction that records a commit: a catalog that names no store yet
    records the identity of the store at ``location`` (just written by its first commit)."""
    mine = store_identity(location)
    if mine is not None and recorded_store(session) is None:
        record_store(session, mine, _where(location))


def check_catalog_url(location: str | Path, url: str) -> None:
    """``check_pair`` for a catalog named by URL, read only (never creates, migrates or
    writes anything): nothing to check where no catalog exists yet."""
    from catalog.db import make_engine, sqlite_file
    from catalog.urls import display_url

    path = sqlite_file(url)
    if path is not None and not path.exists():
        return
    from sqlalchemy.exc import DBAPIError

    from catalog.urls import unreachable

    engine = make_engine(url)
    try:
        check_pair(location, engine, adopt=False, catalog_name=f"catalog {display_url(url)}")
    except DBAPIError as exc:  # cannot connect: the catalog's own one-line error (exit 7)
        raise unreachable(engine, exc) from exc
    finally:
        engine.dispose()
