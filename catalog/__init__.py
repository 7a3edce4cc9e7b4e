"""The s2ingest catalog: which products exist, where each is in the pipeline, what is published.

SQLAlchemy 2.x models, alembic migrations, leased work claims (DESIGN.md §6). Typical use::

    engine = open_catalog(default_url_for_store("/data/nl.zarr"))
    with session_scope(engine) as s:
        record_discovered(s, records)
    with session_scope(engine) as s:
        todo = claim(s, from_states=["discovered", "offline", "failed"], to_state="downloading",
                     worker="host:1234", lease_seconds=600, limit=4)

The names below are loaded on first use (PEP 562): ``catalog.paths`` (where a store's catalog
lives) can be imported without SQLAlchemy, e.g. by a mirror that only looks for a catalog.
"""
from __future__ import annotations

import importlib

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(('current_revision', 'downgrade', 'ensure_current', 'head_revision', 'make_engine', 'migrations_dir', 'open_catalog', 'open_existing_catalog', 'session_scope', 'sqlite_file', 'upgrade'), '.db'),
    **dict.fromkeys(('default_url_for_store',), '.paths'),
    **dict.fromkeys(('ProductRecord', 'Replacement', 'apply_supersede', 'pending_replacements', 'record_deleted_from_hub', 'record_discovered', 'requeue', 'retry_products'), '.discovery'),
    **dict.fromkeys(('CatalogError', 'LeaseLostError'), 'ingest.errors'),
    **dict.fromkeys(('record_store', 'recorded_store'), '.identity'),
    **dict.fromkeys(('CatalogStoreLease', 'LockTimeout', 'store_lease'), '.locks'),
    **dict.fromkeys(('Base', 'HubEvent', 'Layer', 'Product', 'Publish', 'PublishProduct', 'StoreIdentity', 'TimeStep'), '.models'),
    **dict.fromkeys(('ReconcileReport', 'TimeStepRecord', 'next_version', 'reconcile_published', 'record_layer', 'record_publish', 'record_version'), '.publish'),
    **dict.fromkeys(('CatalogStatus', 'VersionInfo', 'get_product', 'status', 'versions'), '.queries'),
    **dict.fromkeys(('TRANSITIONS', 'Guard', 'State'), '.states'),
    **dict.fromkeys(('claim', 'db_now', 'mark_downloaded', 'mark_failed', 'mark_offline', 'mark_published', 'mark_rejected', 'release', 'release_all', 'renew_lease', 'transition'), '.work'),
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
