"""The ingest loop: search a source, record in the catalog, download, verify, ingest, publish.

Each stage claims its work from the catalog with a lease, so a crashed or interrupted run is
resumed by simply running it again, and two workers never take the same product.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

from catalog import (
    ProductRecord as CatalogRecord, TimeStepRecord, claim, get_product, mark_downloaded, mark_failed,
    mark_offline, mark_rejected, open_catalog, reconcile_published, record_deleted_from_hub,
    record_discovered, release, renew_lease, session_scope, transition,
)
from catalog import Product as Row
from sqlalchemy import select

from ingest import holders
from ingest.compute import ComputeOptions, check_options, open_executor
from ingest.publish.engine import Cube, ingest_products
from ingest.publish.identity import check_pair
from catalog.urls import display_url
from ingest.publish.record import existing_catalog, record_in, record_summary, repair_versions
from ingest.errors import AuthenticationError, ProductError, StoreError
from ingest.store.location import grid_for
from ingest.config import Settings
from ingest.products.model import Product
from ingest.products.formats import read_product
from ingest.sources.base import ProductRecord, Source
from ingest.sources.download import fetch_many
from ingest.store import DEFAULT_LOCK_TIMEOUT, faults
from ingest.warping.warp import parse_resampling

log = logging.getLogger(__name__)
LEASE_SECONDS = 3600
SETTLE_HOURS = 6.0


@dataclass
class SyncOptions:
    orbit: int = 51
    since: datetime | None = None
    until: datetime | None = None
    tiles: Sequence[str] | None = None
    max_cloud: float | None = None
    dry_run: bool = False
    keep_products: bool = True
    progress: bool = True
    max_downloads: int = 2
    # DESIGN CHOICE: hold datatakes younger than this many hours (sensing start) before
    # publishing them. The L2A products of one datatake (its tiles, sometimes two parts of
    # one tile) reach the hubs over the first hours after sensing; publishing them in one
    # commit writes each time step once, and a late tile then rarely rewrites a published
    # step. 0 publishes at once.
    settle_hours: float = SETTLE_HOURS
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    compute: ComputeOptions | None = None  # worker processes or a dask cluster (ingest.compute)


@dataclass
class SyncReport:
    found: int = 0
    new: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    deleted_from_hub: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # younger than the settling window
    would_fetch: list[str] = field(default_factory=list)
    would_ingest: list[str] = field(default_factory=list)
    version: int | None = None
    time_steps: int | None = None

    @property
    def has_problems(self) -> bool:
        return bool(self.failed or self.rejected)


def worker_name() -> str:
    """This process's name in the catalog's leases: ``host:pid`` (``holders.me``)."""
    return holders.me()


def _catalog_record(r: ProductRecord) -> CatalogRecord:
    algo, value = r.checksum if r.checksum else (None, None)
    return CatalogRecord(
        name=r.name, hub=r.hub, hub_id=r.hub_id, checksum_algorithm=algo, checksum_value=value,
        size_bytes=r.size, cloud_cover=r.cloud_cover, online=r.online,
        local_path=r.hub_id if r.hub == "local" else None, generation_time=r.generation_time,
    )


def _source_record(row: Row) -> ProductRecord:
    checksum = (row.hub_checksum_algorithm, row.hub_checksum_value) if row.hub_checksum_value else None
    return ProductRecord.from_name(
        row.name, hub=row.hub, hub_id=row.hub_id or row.local_path or row.name, checksum=checksum,
        size=row.size_bytes, online=row.online if row.online is not None else True,
        cloud_cover=row.cloud_cover,
    )


class Syncer:
    """One sync run over one cube and one source."""

    def __init__(self, settings: Settings, source: Source, options: SyncOptions,
                 echo: Callable[[str], None] = log.info) -> None:
        self.settings = settings
        self.source = source
        self.opts = options
        self.echo = echo
        self.grid = grid_for(settings.store, settings.grid)  # the store's own grid
        self.cube = Cube(settings.store, self.grid, options.orbit)
        self.worker = worker_name()
        self.resampling = parse_resampling(settings.resampling)
        check_options(options.compute)  # before any work
        # A dry run changes nothing: it never creates (or migrates) a catalog.
        self.engine = existing_catalog(settings.db_url) if options.dry_run else open_catalog(settings.db_url)
        # a catalog of another store is refused before any work (a new one adopts this store)
        check_pair(settings.store, self.engine, adopt=not options.dry_run,
                   catalog_name=f"catalog {display_url(settings.db_url)}")
        self.report = SyncReport()
        self.executor = None

    def close(self) -> None:
        """Close the catalog's pooled connections (a SQLite catalog's -wal and -shm go with them)."""
        if self.engine is not None:
            self.engine.dispose()

    # -- stages ----------------------------------------------------------------------------
    def run(self) -> SyncReport:
        records = self.search()
        if self.opts.dry_run:
            self.plan_dry_run(records)
            return self.report
        self.store = self.cube.open()
        self._take_store_lease()
        self.store.complete_unfinished()
        self.reclaim_from_dead_workers()
        self.repair_versions()
        self.discover(records)
        self.download()
        with open_executor(self.opts.compute) as self.executor:  # started once per run
            self.ingest()
        return self.report

    def _take_store_lease(self) -> None:
        """On a PostgreSQL catalog, every write of this run also holds the catalog's fenced
        store lease (``catalog.store_lease``), so ``sync`` processes on several machines take
        turns on one store and one whose lease was taken over cannot commit.

        DESIGN CHOICE: only with PostgreSQL: a SQLite catalog lives on one machine, where the
        store's own lock (``flock``, or the S3 lease object) already serialises the writers.
        The store is identified by its URL, or its absolute path: machines sharing a store
        folder must mount it at the same path.
        """
        if self.engine.dialect.name != "postgresql":
            return
        from catalog import store_lease

        url = self.store.url
        store_id = url if "://" in url else str(Path(url).resolve())
        self.store.add_lock(lambda timeout, on_wait: store_lease(
            self.engine, store_id, timeout, on_wait, holder=self.worker))

    def reclaim_from_dead_workers(self) -> None:
        """Give back the work of crashed runs on this machine, so a rerun completes it now.

        DESIGN CHOICE: a lease normally lapses after LEASE_SECONDS. A worker on this host whose
        process no longer exists provably cannot publish any more (a commit it left half way
        has just been completed from its journal, or its staging discarded), so its leases are
        released at once instead of blocking a rerun for an hour; the catalog is then
        reconciled with the store. Workers on other hosts are left to their leases.
        """
        with session_scope(self.engine) as s:
            rows = s.scalars(select(Row).where(Row.lease_owner.like(f"{holders.host()}:%"),
                                               Row.state.in_(["downloading", "ingesting"]))).all()
            dead: dict[str, list[int]] = {}
            for row in rows:
                if holders.alive(row.lease_owner) is False:
                    dead.setdefault(row.lease_owner, []).append(row.id)
            for owner, ids in dead.items():
                released = release(s, ids, owner)
                log.warning("released %d products left by crashed worker %s", len(released), owner)

    def repair_versions(self) -> None:
        """Record the store versions the catalog misses (``record.repair_versions``): a
        commit whose run was killed before its catalog commit, or made before the catalog
        existed, gets its publish row now (the store is the truth, DESIGN.md §5)."""
        with session_scope(self.engine) as s:
            repaired = repair_versions(s, self.store, worker=self.worker)
        if repaired:
            self.echo(f"recorded store version{'s' if len(repaired) > 1 else ''} "
                      f"{', '.join(map(str, repaired))} in the catalog, which missed "
                      f"{'them' if len(repaired) > 1 else 'it'}")

    def search(self) -> list[ProductRecord]:
        o = self.opts
        records = self.source.search(o.orbit, self.grid, o.since, o.until, o.tiles, o.max_cloud)
        self.report.found = len(records)
        if o.since is not None and not o.dry_run:
            deleted = self.source.deleted_products(o.since)
            if deleted:
                with session_scope(self.engine) as s:
                    record_deleted_from_hub(s, [d.name for d in deleted], detail="DeletedProducts")
                self.report.deleted_from_hub = [d.name for d in deleted]
        return records

    def plan_dry_run(self, records: list[ProductRecord]) -> None:
        if self.engine is None:  # no catalog yet: everything is new
            for r in records:
                if r.hub != "local":
                    self.report.would_fetch.append(r.name)
                self.report.would_ingest.append(r.name)
            return
        with session_scope(self.engine) as s:
            for r in records:
                row = get_product(s, r.name)
                state = row.state if row is not None else "new"
                if state in ("published", "rejected", "superseded"):
                    continue
                if state in ("new", "discovered", "offline", "failed", "downloading") and r.hub != "local":
                    self.report.would_fetch.append(r.name)
                self.report.would_ingest.append(r.name)

    def discover(self, records: list[ProductRecord]) -> None:
        with session_scope(self.engine) as s:
            new, _ = record_discovered(s, [_catalog_record(r) for r in records])
        self.report.new = new

    def download(self) -> None:
        with session_scope(self.engine) as s:
            rows = claim(s, from_states=["discovered", "offline", "failed"], to_state="downloading",
                         worker=self.worker, lease_seconds=LEASE_SECONDS, limit=10_000,
                         orbit=self.opts.orbit)
            todo = [(row.id, _source_record(row)) for row in rows]
        if not todo:
            return
        if not self.opts.progress:  # no bars (piped log, --no-progress): one plain line per step
            self.echo(f"fetching and verifying {len(todo)} products")
        outcomes = fetch_many(self.source, [r for _, r in todo], self.settings.cache_dir,
                              max_workers=self.opts.max_downloads, progress=self.opts.progress)
        auth_error = next((o.error for o in outcomes if isinstance(o.error, AuthenticationError)), None)
        with session_scope(self.engine) as s:
            for (pid, record), out in zip(todo, outcomes):
                if auth_error is not None and out.status == "failed":
                    # Bad credentials are the run's problem, not the products': give them back
                    # unharmed (no attempt counted, due at once) and stop with the hub error.
                    release(s, [pid], self.worker)
                elif out.status == "fetched":
                    mark_downloaded(s, pid, self.worker, local_path=str(out.path))
                    self.report.downloaded.append(record.name)
                elif out.status == "offline":
                    mark_offline(s, pid, self.worker, reason=out.message)
                    self.report.offline.append(record.name)
                elif out.status in ("quarantined", "rejected"):
                    reason = out.error.reason if isinstance(out.error, ProductError) else out.message
                    mark_rejected(s, pid, reason, worker=self.worker)
                    self.report.rejected.append((record.name, reason))
                else:
                    mark_failed(s, pid, self.worker, out.message)
                    self.report.failed.append((record.name, out.message))
        if auth_error is not None:
            raise auth_error

    def ingest(self) -> None:
        with session_scope(self.engine) as s:
            rows = claim(s, from_states=["downloaded", "failed"], to_state="ingesting",
                         worker=self.worker, lease_seconds=LEASE_SECONDS, limit=10_000,
                         orbit=self.opts.orbit)
            claimed = {row.name: (row.id, row.local_path) for row in rows}
        products: dict[str, Product] = {}
        with session_scope(self.engine) as s:
            for name, (pid, path) in claimed.items():
                try:
                    product = read_product(path)
                    self.cube_validate(product)
                    products[name] = product
                except ProductError as exc:
                    mark_rejected(s, pid, exc.reason, worker=self.worker)
                    self.report.rejected.append((name, exc.reason))
                except OSError as exc:  # the cached file vanished or is unreadable: retry later
                    mark_failed(s, pid, self.worker, f"cannot read {path}: {exc}")
                    self.report.failed.append((name, f"cannot read {path}: {exc}"))
        products = self._hold_young(products, claimed)
        batches = self._batches(products)
        try:
            faults.point("sync.claimed")
            for i, batch in enumerate(batches, 1):
                if not self.opts.progress:
                    self.echo(f"warping and writing {len(batch)} products (batch {i}/{len(batches)})")
                self._publish_batch(batch, claimed)
        except BaseException:
            # DESIGN CHOICE: a run that stops (store error, lock timeout, Ctrl-C) gives its
            # unpublished claims back at once, so the next run takes them without waiting for
            # the leases to lapse.
            self._release_unfinished(claimed)
            raise

    def _hold_young(self, products: dict[str, Product],
                    claimed: dict[str, tuple[int, str]]) -> dict[str, Product]:
        """Give back products of datatakes still inside the settling window (see SyncOptions)."""
        if self.opts.settle_hours <= 0:
            return products
        cutoff = datetime.now(timezone.utc) - timedelta(hours=self.opts.settle_hours)
        young = sorted(n for n, p in products.items() if p.datatake_start > cutoff)
        if not young:
            return products
        with session_scope(self.engine) as s:
            release(s, [claimed[n][0] for n in young], self.worker)
        for n in young:
            del claimed[n]
        self.report.held = young
        self.echo(f"held {len(young)} products of datatakes younger than {self.opts.settle_hours:g} h "
                  "(--settle); a later run publishes them")
        return {n: p for n, p in products.items() if n not in young}

    def _release_unfinished(self, claimed: dict[str, tuple[int, str]]) -> None:
        try:
            with session_scope(self.engine) as s:
                release(s, [pid for pid, _ in claimed.values()], self.worker)
        except Exception as exc:  # the original error matters more
            log.warning("could not release the claims of this run: %s", exc)

    def _batches(self, products: dict[str, Product]) -> list[dict[str, Product]]:
        takes = {(p.datatake_start, p.platform) for p in products.values()}
        chunks = 1
        if self.executor is not None and len(takes) > self.grid.time_chunk:
            chunks = time_chunks_per_batch(self.executor.workers)  # starts the workers: there is work
        return batches_of(products, self.grid.time_chunk * chunks)

    def _publish_batch(self, products: dict[str, Product], claimed: dict[str, tuple[int, str]]) -> None:
        while products:
            try:
                self._publish(products, claimed)
                return
            except ProductError as exc:  # found while warping: reject it, publish the rest
                pid = claimed[exc.product][0] if exc.product in claimed else None
                if pid is None:
                    raise
                with session_scope(self.engine) as s:
                    mark_rejected(s, pid, exc.reason, worker=self.worker)
                self.report.rejected.append((exc.product, exc.reason))
                products.pop(exc.product, None)

    def cube_validate(self, product: Product) -> None:
        from ingest.publish.engine import validate

        validate(product, self.cube)

    def _resolve(self, name: str) -> Product:
        """A published product's model again, fetching it anew if the cache dropped it."""
        with session_scope(self.engine) as s:
            row = get_product(s, name)
            if row is None:
                raise StoreError(f"the store lists {name}, which the catalog does not know")
            path, record = row.local_path, _source_record(row)
        if path and Path(path).exists():
            return read_product(path)
        self.echo(f"fetching {name} again: its time step must be recomputed")
        return read_product(self.source.fetch(record, self.settings.cache_dir, progress=self.opts.progress))

    def _publish(self, products: dict[str, Product], claimed: dict[str, tuple[int, str]]) -> None:
        ids = [claimed[n][0] for n in products]

        def renew() -> None:  # a worker that lost its lease must not publish
            with session_scope(self.engine) as s:
                renew_lease(s, ids, self.worker, LEASE_SECONDS)

        plan, written = ingest_products(
            self.cube, list(products.values()), self._resolve, self.resampling,
            progress=self.opts.progress, threads=self.settings.threads, before_commit=renew,
            store=self.store, on_wait=self.echo, lock_timeout=self.opts.lock_timeout,
            validated=True,  # by the read step (cube_validate), which rejects bad products early
            executor=self.executor,
        )
        faults.point("catalog.before-commit")
        state = self.store.published(self.cube.group)
        in_store = {n for names in state.products for n in names}
        superseded = set(plan.superseded)
        with session_scope(self.engine) as s:
            done = [claimed[n][0] for n in products if n in in_store]
            for n in products:
                if n in superseded and n not in in_store:
                    transition(s, claimed[n][0], "superseded", worker=self.worker,
                               reason="a newer processing of this datatake and tile is published")
                    self.report.superseded.append(n)
            if written is not None:
                steps = [TimeStepRecord(t, p, d) for t, p, d in
                         zip(state.times, state.platforms, state.datatake_ids)]
                record_in(s, self.store, written.version, group=f"/{self.cube.group}", worker=self.worker,
                          product_ids=done, time_steps=steps, n_chunks_written=written.chunks_written)
            self._reconcile(s, state, recorded=written.version if written is not None else None)
        self.report.published += [n for n in products if n in in_store]
        self.report.version = state.version
        self.report.time_steps = state.length
        if not self.opts.keep_products:
            self._drop_cached(products)

    def _reconcile(self, s, state, recorded: int | None = None) -> None:
        """Make the catalog say what the store says: its time axis, the published products
        and a publish row with the manifest summary of the store's version.

        DESIGN CHOICE: the store is the truth (DESIGN.md §5). After a normal commit this only
        records the version's summary; after a crash between the store commit and the
        catalog commit (or a commit a crashed writer left and this run completed), it writes
        the rows that run never wrote.
        """
        if not state.group_version:  # the group was never written
            return
        steps = [TimeStepRecord(t, p, d) for t, p, d in zip(state.times, state.platforms, state.datatake_ids)]
        in_store = {n for names in state.products for n in names}
        # the version that last wrote this group (a layer publish may have come after it)
        version = state.group_version
        reconcile_published(s, group=f"/{self.cube.group}", version=version, time_steps=steps,
                            products_in_store=in_store, worker=self.worker)
        if version != recorded:  # ``record_in`` recorded this run's commit with its summary
            record_summary(s, self.store, version, f"/{self.cube.group}", worker=self.worker)

    def _drop_cached(self, products: dict[str, Product]) -> None:
        cache = Path(self.settings.cache_dir).resolve()
        for p in products.values():
            src = Path(p.source).resolve()
            if cache in src.parents:  # never delete a user's own product folder
                shutil.rmtree(src) if src.is_dir() else src.unlink(missing_ok=True)


def sync(settings: Settings, source: Source, options: SyncOptions,
         echo: Callable[[str], None] = log.info) -> SyncReport:
    """Run one sync; see ``Syncer``."""
    syncer = Syncer(settings, source, options, echo)
    try:
        return syncer.run()
    finally:
        syncer.close()


PARTS_PER_TIME_CHUNK = 4  # with workers: about this many parts of one time chunk, at most


def time_chunks_per_batch(workers: int) -> int:
    """How many time chunks of datatakes one transaction takes when ``workers`` work on it.

    DESIGN CHOICE: parts of different time chunks are independent, while cutting one time
    chunk into more parts decodes the JP2 strips at each cut twice (a tile spans about 18
    chunk rows and 11 strips: 32 parts of one time chunk would decode the imagery almost
    twice). So many workers get several time chunks per transaction, each cut into at most
    ``PARTS_PER_TIME_CHUNK`` parts; a crash still loses at most one transaction's work.
    """
    return max(1, -(-workers // PARTS_PER_TIME_CHUNK))


def batches_of(products: dict[str, Product], size: int) -> list[dict[str, Product]]:
    """Products grouped by ``size`` datatakes (whole time chunks of them), oldest first.

    DESIGN CHOICE: one transaction per group of ``time_chunk`` datatakes (or several time
    chunks of them, ``time_chunks_per_batch``): a backfill writes each (5, y, x) chunk once
    per group instead of once per date (DESIGN.md §8), a crash loses at most one group, and
    open files stay bounded.
    """
    by_take: dict[tuple, dict[str, Product]] = {}
    for name, p in products.items():
        by_take.setdefault((p.datatake_start, p.platform), {})[name] = p
    takes = sorted(by_take)
    return [{n: p for t in takes[i:i + size] for n, p in by_take[t].items()}
            for i in range(0, len(takes), size)]
