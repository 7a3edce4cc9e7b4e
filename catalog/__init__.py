"""The s2ingest catalog: which products exist, where each is in the pipeline, what is published.

SQLAlchemy 2.x models, alembic migrations, leased work claims (DESIGN.md §6). Typical use::

    engine = open_catalog(default_url_for_store("/data/nl.zarr"))
    with session_scope(engine) as s:
        record_discovered(s, records)
    with session_scope(engine) as s:
        todo = claim(s, from_states=["discovered", "offline", "failed"], to_state="downloading",
                     worker="host:1234", lease_seconds=600, limit=4)
"""
from __future__ import annotations

from .db import (
    current_revision,
    default_url_for_store,
    downgrade,
    ensure_current,
    head_revision,
    make_engine,
    migrations_dir,
    open_catalog,
    open_existing_catalog,
    session_scope,
    sqlite_file,
    upgrade,
)
from .discovery import (
    ProductRecord,
    Replacement,
    apply_supersede,
    pending_replacements,
    record_deleted_from_hub,
    record_discovered,
    requeue,
    retry_products,
)
from ingest.errors import CatalogError, LeaseLostError

from .identity import record_store, recorded_store
from .locks import CatalogStoreLease, LockTimeout, store_lease

from .models import Base, HubEvent, Layer, Product, Publish, PublishProduct, StoreIdentity, TimeStep
from .publish import (
    ReconcileReport,
    TimeStepRecord,
    next_version,
    reconcile_published,
    record_layer,
    record_publish,
    record_version,
)
from .queries import CatalogStatus, VersionInfo, get_product, status, versions
from .states import TRANSITIONS, Guard, State
from .work import (
    claim,
    db_now,
    mark_downloaded,
    mark_failed,
    mark_offline,
    mark_published,
    mark_rejected,
    release,
    release_all,
    renew_lease,
    transition,
)

__all__ = [
    "Base", "CatalogError", "LockTimeout", "CatalogStoreLease", "store_lease", "CatalogStatus", "LeaseLostError", "Guard", "HubEvent", "Layer", "Product", "ProductRecord", "Publish",
    "PublishProduct", "Replacement", "State", "TRANSITIONS", "TimeStep", "TimeStepRecord",
    "apply_supersede", "claim", "current_revision", "db_now", "default_url_for_store",
    "downgrade", "ensure_current", "get_product", "head_revision", "make_engine", "mark_downloaded",
    "mark_failed", "mark_offline", "mark_published", "mark_rejected", "migrations_dir",
    "next_version", "open_catalog", "open_existing_catalog", "sqlite_file", "pending_replacements", "record_deleted_from_hub",
    "record_discovered", "record_layer", "requeue", "retry_products", "record_publish", "release", "renew_lease", "requeue",
    "session_scope", "status", "transition", "upgrade",
    "ReconcileReport", "VersionInfo", "reconcile_published", "record_version", "release_all", "versions",
    "StoreIdentity", "record_store", "recorded_store",
]
