"""Ingest products into a cube: validate, plan, warp + mosaic + write, publish.

This is the store-level API (no catalog): ``ingest_products`` takes product models and a
way to find already-published products again (needed when a late tile or a reprocessed
product forces a time step to be recomputed). ``ingest.publish.sync`` wraps it with the catalog.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rasterio.enums import Resampling

from ingest.compute import Executor
from ingest.errors import ProductError, StoreError
from ingest.publish.footprint import majority_epsg, planned
from ingest.grid import CubeGrid
from ingest.overviews import overview_stream, update_overviews
from ingest.publish.plan import DatatakeKey, PlannedProduct, WritePlan, plan_write
from ingest.products.model import Product
from ingest.products.names import ProductName
from ingest.quality import atlas_sums, update_quality
from ingest.products.formats import check_rasters
from ingest.products.safe import check_orbit, check_overlaps
from ingest.store import DEFAULT_LOCK_TIMEOUT, CubeStore, PublishedState, Transaction, group_path
from ingest.store.imagery import ensure_imagery_group
from ingest.store.layout import GROUP_VERSION_ATTR
from ingest.publish.write import WriteReport, apply_plan

log = logging.getLogger(__name__)

Resolver = Callable[[str], Product]


@dataclass(frozen=True)
class Cube:
    """Where a cube lives and how it is laid out."""

    path: Path | str  # a local folder or a URL (s3://bucket/prefix/nl.zarr)
    grid: CubeGrid
    orbit: int

    @property
    def group(self) -> str:
        return group_path(self.orbit)

    def open(self, *, write: bool = True) -> CubeStore:
        """The store (to write: created by its first commit if nothing is there); checks the grid."""
        if write:
            return CubeStore.for_writing(self.path, self.grid)
        return CubeStore.open(self.path, self.grid)

    def ensure(self) -> CubeStore:
        """The store with this orbit's (empty) group, created if needed."""
        store = CubeStore.for_writing(self.path, self.grid)
        store.complete_unfinished()
        if not store.group_exists(self.group):
            with store.transaction() as tx:  # root and group in one commit
                if ensure_imagery_group(tx, self.grid, self.group) or tx.creates_store:
                    tx.commit()
        return store


def validate(product: Product, cube: Cube) -> None:
    """Reject products of another orbit, outside the grid, or whose rasters disagree with
    their metadata (raises ProductError naming the file).

    DESIGN CHOICE: the rasters are checked here, before any warping: planning and the warp
    trust MTD_TL.xml, so a band that is shifted, cut short, of another resolution, CRS or
    data type would otherwise be published in the wrong place or fail half way through a
    write. ``check_rasters`` opens headers only (no pixel is decoded), so this is cheap;
    damage found only when decoding surfaces from the warp as CorruptProductError.
    """
    check_orbit(product, cube.orbit)
    check_overlaps(product, cube.grid)
    check_rasters(product)


def _from_name(name: str, key: DatatakeKey) -> PlannedProduct:
    """A published product known only by its name (enough when its time step is untouched)."""
    n = ProductName.parse(name)
    epsg = 32600 + int(n.tile[:2])  # MGRS zone of the tile; Sentinel-2 tiles over NL are north
    return PlannedProduct(n.name, key, n.tile, epsg, n.baseline, n.discriminator)


def published_products(state: PublishedState, grid: CubeGrid, resolve: Resolver,
                       touched: set[tuple[str, float]] | None = None) -> dict[DatatakeKey, list[PlannedProduct]]:
    """The planning view of what is published, keyed by the stored time axis.

    DESIGN CHOICE: only products of time steps in ``touched`` ((platform, epoch seconds)
    pairs; None: all) are resolved to their full metadata (their chunks may be recomputed);
    the others are planned from their names, so a sync never reads or re-fetches the whole
    archive just to plan.
    """
    result: dict[DatatakeKey, list[PlannedProduct]] = {}
    for t, platform, names in zip(state.times, state.platforms, state.products):
        key = (t, platform)
        if touched is not None and (platform, round(t.timestamp(), 3)) not in touched:
            result[key] = [_from_name(name, key) for name in names]
            continue
        members = []
        for name in names:
            p = planned(resolve(name), grid)
            members.append(PlannedProduct(p.name, key, p.tile, p.epsg, p.baseline,
                                          p.generation_time, p.chunks))
        result[key] = members
    return result


def make_plan(state: PublishedState, grid: CubeGrid, incoming: Sequence[Product],
              resolve: Resolver) -> WritePlan:
    """Plan ``incoming`` against the published ``state`` (pure but for ``resolve``)."""
    touched = {(p.platform, round(p.datatake_start.timestamp(), 3)) for p in incoming}
    published = published_products(state, grid, resolve, touched)
    fresh = [planned(p, grid) for p in incoming]
    # Snap each product's datatake key onto a published one when they are the same datatake
    # (the stored time has millisecond precision; metadata may carry more).
    stored = {(k[1], round(k[0].timestamp(), 3)): k for k in published}
    snapped = []
    for p in fresh:
        k = stored.get((p.datatake[1], round(p.datatake[0].timestamp(), 3)), p.datatake)
        snapped.append(PlannedProduct(p.name, k, p.tile, p.epsg, p.baseline, p.generation_time, p.chunks))
    return plan_write(published, snapped, majority_epsg(grid), state.version)


def plan_products(cube: Cube, store: CubeStore, products: Sequence[Product], resolve: Resolver) -> WritePlan:
    """A plan from the published state as it is now, without the lock (e.g. a dry run);
    ``write_plan`` refuses it if the store has moved on since."""
    return make_plan(store.published(cube.group), cube.grid, products, resolve)


def _needed(plan: WritePlan, products: Sequence[Product], resolve: Resolver) -> dict[str, Product]:
    known = {p.name: p for p in products}
    needed: dict[str, Product] = {}
    for slot in plan.slots:
        for member in slot.products:
            if member.name not in needed:
                try:
                    needed[member.name] = known.get(member.name) or resolve(member.name)
                except ProductError:
                    raise
                except (OSError, KeyError) as exc:
                    raise StoreError(
                        f"time step {slot.datatake[0]:%Y-%m-%dT%H:%M:%S} must be recomputed but "
                        f"product {member.name} is not available any more: {exc}"
                    ) from exc
    return needed


def _write(tx: Transaction, cube: Cube, plan: WritePlan, products: Sequence[Product],
           resolve: Resolver, resampling: dict[str, Resampling], *, progress: bool, threads: int,
           before_commit: Callable[[], None] | None, executor: Executor | None = None) -> WriteReport:
    # the overview levels follow in the same commit, made from the chunks the writer merges
    # while it still warps (ingest/overviews/stream.py), the rest after it
    stream = None if executor is not None else overview_stream(tx, cube.grid, cube.group)
    # and the quality atlas' sums of the new steps, from the chunks the writer (or a worker)
    # merges: nothing is decoded a second time for it
    sums = atlas_sums(tx, cube.grid, cube.group, plan)
    report = apply_plan(tx, cube.grid, cube.group, plan, _needed(plan, products, resolve),
                        resampling, threads=threads, progress=progress, executor=executor,
                        sink=stream, atlas=sums)
    tx.update_attrs(cube.group, {GROUP_VERSION_ATTR: tx.base_version + 1})
    update_overviews(tx, cube.grid, cube.group, threads=threads, stream=stream,
                     steps=plan.changed_steps())
    # the quality atlas of the steps this commit wrote, in the same version (ingest/quality)
    update_quality(tx, cube.grid, cube.group, plan, sums=sums)
    if before_commit is not None:
        before_commit()
    try:
        report.version = tx.commit().version
    except StoreError:
        raise
    except OSError as exc:  # full disk, lost mount while committing: nothing was switched
        raise StoreError(f"cannot write to {tx.store.url}: {exc.strerror or exc}; "
                         "nothing was published") from exc
    report.commit = tx.report
    return report


def write_plan(cube: Cube, store: CubeStore, plan: WritePlan, products: Sequence[Product],
               resolve: Resolver, resampling: dict[str, Resampling], *, progress: bool = True,
               threads: int = 2) -> WriteReport:
    """Write a plan made earlier; ``StalePlanError`` if the store is no longer at its base."""
    with store.transaction() as tx:
        tx.check_base(plan.base_version)
        return _write(tx, cube, plan, products, resolve, resampling, progress=progress,
                      threads=threads, before_commit=None)


def ingest_products(
    cube: Cube, products: Sequence[Product], resolve: Resolver,
    resampling: dict[str, Resampling], *, progress: bool = True, threads: int = 2,
    before_commit: Callable[[], None] | None = None, store: CubeStore | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait: Callable[[str], None] | None = None,
    validated: bool = False, executor: Executor | None = None,
) -> tuple[WritePlan, WriteReport | None]:
    """Validate, plan and write ``products`` in one locked transaction (the decoding, warping
    and encoding on ``executor``'s workers when one is given, see ``ingest.compute``).

    DESIGN CHOICE (DESIGN.md §5): recovery, reading the published state, planning and
    writing all happen under the writer lock, so a plan can never be made from a state
    that an unfinished or concurrent commit is changing.
    """
    if not validated:  # the caller did not run ``validate`` on them already
        for p in products:
            validate(p, cube)
    store = store or cube.open()
    if store.group_exists(cube.group) and not store.has_unfinished_commit():
        # DESIGN CHOICE: a rerun with nothing new takes no lock and writes nothing. Safe
        # without the lock: a published version is never taken back, so products already in
        # the readers' view stay published whatever a concurrent writer does.
        plan = plan_products(cube, store, products, resolve)
        if plan.is_empty:
            log.info("nothing to write: every product is already published")
            return plan, None
    with store.transaction(timeout=lock_timeout, on_wait=on_wait) as tx:
        created = ensure_imagery_group(tx, cube.grid, cube.group)
        plan = make_plan(tx.published(cube.group), cube.grid, products, resolve)
        tx.check_base(plan.base_version)
        if plan.is_empty and not created:
            log.info("nothing to write: every product is already published")
            return plan, None
        report = _write(tx, cube, plan, products, resolve, resampling, progress=progress,
                        threads=threads, before_commit=before_commit, executor=executor)
    return plan, report
