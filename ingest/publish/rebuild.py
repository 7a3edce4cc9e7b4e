"""A lost catalog made again from the store (``s2ingest db rebuild``).

The store is the truth (DESIGN.md §5) and records enough to describe itself: its identity
(``.s2ingest/id.json``), the versions it keeps (manifests under ``.s2ingest/manifests``), per
imagery group the time axis with its provenance coordinates (platform, datatake id, the names
of the contributing products) and the version that last wrote it, and per reference-layer
variable the provenance of every edition (source file, sha256, attribute). A rebuild writes
all of that into a new, empty catalog through the catalog's own functions:

- the store's identity (``record_store``), so the pair is known to belong together;
- a publish row for every version the store keeps, with its manifest summary;
- per imagery group: every product its ``products`` coordinate names (identity from the
  name, state published, linked to its time step) and the time steps themselves;
- per reference layer edition: its layer row.

What the store does not record is not made up: products that were rejected, failed, offline
or superseded and replaced are unknown to the new catalog (a later ``sync`` finds them again
at their source and the reprocessing rule decides as it would have), and versions older than
the kept manifests have no publish row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from catalog.db import open_catalog, session_scope
from catalog.discovery import record_discovered
from catalog.identity import record_store, recorded_store
from catalog.models import Product, Publish
from catalog.publish import TimeStepRecord, reconcile_published, record_layer
from catalog.urls import display_url
from ingest.errors import ConfigError
from ingest.layers.publish import list_layers
from ingest.publish.identity import store_identity
from ingest.publish.record import repair_versions
from ingest.sources.base import ProductRecord
from ingest.store import CubeStore
from ingest.store.layout import GROUP_VERSION_ATTR
from ingest.store.verify import imagery_groups


@dataclass
class RebuildReport:
    store_id: str | None
    versions: list[int] = field(default_factory=list)
    time_steps: int = 0
    products: int = 0
    layers: int = 0


def rebuild_catalog(location: str | Path, url: str, *, worker: str = "db rebuild") -> RebuildReport:
    """Write what the store at ``location`` records into the new catalog at ``url`` (created
    at the current schema). A catalog that already holds products or versions is refused
    (``ConfigError``): a rebuild never merges into an existing catalog."""
    store = CubeStore.open(location)
    ident = store_identity(location)
    engine = open_catalog(url)
    try:
        with session_scope(engine) as s:
            used = (s.scalar(select(func.count()).select_from(Product))
                    or s.scalar(select(func.count()).select_from(Publish)))
            if used or recorded_store(s) is not None:
                raise ConfigError(f"catalog {display_url(url)} is not empty; `db rebuild` writes a "
                                  "new catalog: give the URL of a new database or file (--db)")
            report = RebuildReport(ident)
            if ident is not None:
                text = str(location)
                record_store(s, ident, text if "://" in text else str(Path(text).resolve()))
            report.versions = sorted(store.manifest_versions())
            repair_versions(s, store, worker=worker)
            for group in imagery_groups(store):
                report.time_steps, report.products = _imagery(s, store, group, worker, report)
            report.layers = _layers(s, store, location)
        return report
    finally:
        engine.dispose()


def _imagery(s, store: CubeStore, group: str, worker: str, report: RebuildReport) -> tuple[int, int]:
    state = store.published(group)
    if not state.group_version:
        return report.time_steps, report.products
    names = sorted({n for names in state.products for n in names if n})
    records = [ProductRecord.from_name(n, hub="local", hub_id=n) for n in names]
    record_discovered(s, records, supersede=False)
    steps = [TimeStepRecord(t, p, d) for t, p, d in zip(state.times, state.platforms, state.datatake_ids)]
    reconcile_published(s, group=f"/{group}", version=state.group_version, time_steps=steps,
                        products_in_store=set(names), worker=worker)
    return report.time_steps + len(steps), report.products + len(names)


def _layers(s, store: CubeStore, location: str | Path) -> int:
    rows = list_layers(location)
    meta = store.consolidated("") or {}
    for r in rows:
        group = r["group"].strip("/")
        version = int(meta.get(f"{group}/.zattrs", {}).get(GROUP_VERSION_ATTR, store.version()))
        record_layer(s, group=f"/{group}", name=r["variable"], edition=str(r["edition"]),
                     source_name=str(r.get("source", "")), sha256=str(r.get("sha256", "")),
                     version=version, attribute=r.get("attribute"))
    return len(rows)


def follow_store(engine, location: str | Path, *, worker: str) -> None:
    """Bring an existing catalog up to what the store at ``location`` now records: a publish
    row for every kept version it misses, the products and time steps of each imagery group,
    the reference-layer editions (all idempotent). Used after a mirror commit: a copy kept
    beside its own catalog learns what the copied version holds, as a sync would record it."""
    store = CubeStore.open(location)
    with session_scope(engine) as s:
        repair_versions(s, store, worker=worker)
        report = RebuildReport(None)
        for group in imagery_groups(store):
            _imagery(s, store, group, worker, report)
        _layers(s, store, location)
