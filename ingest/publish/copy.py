"""A mirror copy, recorded in the copy's catalog where one exists.

Kept apart from ``ingest.publish.commits``: a copy without a catalog (the usual case) never
loads SQLAlchemy or the catalog models, which would cost a mirror of a small cube a tenth of
its time; they are imported only when there is a catalog to record in.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ingest.copies.mirror import MirrorReport


def publish_copy(source: str, copy: str, *, catalog: "Engine | str | None" = None,
                 **options) -> "MirrorReport":
    """``ingest.copies.mirror.mirror(source, copy, **options)``, and the copy's new version
    recorded in ``catalog`` where one exists (its products, time steps and layers too). By
    default that is the SQLite catalog beside a local copy, when there is one: a mirror kept
    beside its own catalog stays ``verify``-clean; a plain copy has none and nothing is
    recorded. Returns the mirror's report."""
    from ingest.copies.mirror import mirror

    report = mirror(source, copy, **options)
    if catalog is None:
        if "://" in copy:
            return report  # no default catalog for a copy in an object store
        from catalog.paths import catalog_path_for_store, default_url_for_store

        if not catalog_path_for_store(copy).exists():
            return report  # a SQLite file that does not exist is no catalog
        catalog = default_url_for_store(copy)
    from ingest.publish.commits import worker
    from ingest.publish.record import catalog_scope

    with catalog_scope(catalog) as engine:
        if report.changed and engine is not None:
            from ingest.publish.rebuild import follow_store

            follow_store(engine, copy, worker=worker("mirror"))
    return report
