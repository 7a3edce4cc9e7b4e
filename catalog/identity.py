"""Which store a catalog describes: the store's identity, recorded once (``StoreIdentity``).

A store records a random identity in ``.s2ingest/id.json``; the catalog records it the first
time both are used together (``record_store``). A command that opens a store and a catalog
first compares the two (``ingest.publish.identity``) and refuses a catalog of another store
before any work: its rows would otherwise describe products and versions of that other store.
"""
from __future__ import annotations

from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingest.errors import CatalogMismatchError

from .models import StoreIdentity


def recorded_store(session: Session) -> StoreIdentity | None:
    """The store this catalog describes; None when it has recorded none yet (a new catalog,
    or one from before identities)."""
    if not inspect(session.connection()).has_table(StoreIdentity.__tablename__):
        return None  # an outdated catalog: its upgrade adds the table
    return session.scalars(select(StoreIdentity).order_by(StoreIdentity.recorded_at)).first()


def record_store(session: Session, store_id: str, location: str | None) -> bool:
    """Record ``store_id`` as this catalog's store if it has none; True if recorded now.
    A catalog that already names another store raises ``CatalogMismatchError``."""
    row = recorded_store(session)
    if row is None:
        try:
            with session.begin_nested():  # another process may record it at the same moment
                session.add(StoreIdentity(store_id=store_id, location=location))
            return True
        except IntegrityError:
            row = recorded_store(session)
    if row is not None and row.store_id != store_id:
        raise CatalogMismatchError(
            f"the catalog belongs to store {row.store_id} ({row.location or 'location unknown'}), "
            f"not to {location or 'this store'} ({store_id})")
    return False
