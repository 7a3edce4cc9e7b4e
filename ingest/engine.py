"""Ingest products into a cube: validate, plan, warp + mosaic + write, publish.

This is the store-level API (no catalog): ``ingest_products`` takes product models and a
way to find already-published products again (needed when a late tile or a reprocessed
product forces a time step to be recomputed). ``ingest.sync`` wraps it with the catalog.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rasterio.enums import Resampling

from .errors import StoreError
from .footprint import majority_epsg, planned
from .grid import CubeGrid
from .plan import DatatakeKey, PlannedProduct, WritePlan, plan_write
from .product import Product, ProductName
from .safe import check_orbit, check_overlaps, check_rasters
from .store import create_group, group_exists, group_path, init_store, read_published
from .write import WriteReport, apply_plan

log = logging.getLogger(__name__)

Resolver = Callable[[str], Product]


@dataclass(frozen=True)
class Cube:
    """Where a cube lives and how it is laid out."""

    path: Path
    grid: CubeGrid
    orbit: int

    @property
    def group(self) -> str:
        return group_path(self.orbit)

    def ensure(self) -> None:
        """Create the store and the orbit group if needed; refuse a store of another grid."""
        init_store(self.path, self.grid)
        if not group_exists(self.path, self.group):
            create_group(self.path, self.grid, self.group)


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


def published_products(cube: Cube, resolve: Resolver,
                       touched: set[tuple[str, float]] | None = None) -> dict[DatatakeKey, list[PlannedProduct]]:
    """The planning view of what is published, keyed by the stored time axis.

    DESIGN CHOICE: only products of time steps in ``touched`` ((platform, epoch seconds)
    pairs; None: all) are resolved to their full metadata (their chunks may be recomputed);
    the others are planned from their names, so a sync never reads or re-fetches the whole
    archive just to plan.
    """
    state = read_published(cube.path, cube.group)
    result: dict[DatatakeKey, list[PlannedProduct]] = {}
    for t, platform, names in zip(state.times, state.platforms, state.products):
        key = (t, platform)
        if touched is not None and (platform, round(t.timestamp(), 3)) not in touched:
            result[key] = [_from_name(name, key) for name in names]
            continue
        members = []
        for name in names:
            p = planned(resolve(name), cube.grid)
            members.append(PlannedProduct(p.name, key, p.tile, p.epsg, p.baseline,
                                          p.generation_time, p.chunks))
        result[key] = members
    return result


def make_plan(cube: Cube, incoming: Sequence[Product], resolve: Resolver) -> WritePlan:
    touched = {(p.platform, round(p.datatake_start.timestamp(), 3)) for p in incoming}
    published = published_products(cube, resolve, touched)
    fresh = [planned(p, cube.grid) for p in incoming]
    # Snap each product's datatake key onto a published one when they are the same datatake
    # (the stored time has millisecond precision; metadata may carry more).
    stored = {(k[1], round(k[0].timestamp(), 3)): k for k in published}
    snapped = []
    for p in fresh:
        k = stored.get((p.datatake[1], round(p.datatake[0].timestamp(), 3)), p.datatake)
        snapped.append(PlannedProduct(p.name, k, p.tile, p.epsg, p.baseline, p.generation_time, p.chunks))
    return plan_write(published, snapped, majority_epsg(cube.grid))


def ingest_products(
    cube: Cube, products: Sequence[Product], resolve: Resolver,
    resampling: dict[str, Resampling], *, progress: bool = True, threads: int = 2,
    before_commit: Callable[[], None] | None = None, version: int | None = None,
) -> tuple[WritePlan, WriteReport | None]:
    """Validate, plan and write ``products``; returns the plan and what was written."""
    cube.ensure()
    for p in products:
        validate(p, cube)
    plan = make_plan(cube, products, resolve)
    if plan.is_empty:
        log.info("nothing to write: every product is already published")
        return plan, None
    known = {p.name: p for p in products}
    needed: dict[str, Product] = {}
    for slot in plan.slots:
        for member in slot.products:
            if member.name not in needed:
                try:
                    needed[member.name] = known.get(member.name) or resolve(member.name)
                except (OSError, KeyError) as exc:
                    raise StoreError(
                        f"time step {slot.datatake[0]:%Y-%m-%dT%H:%M:%S} must be recomputed but "
                        f"product {member.name} is not available any more: {exc}"
                    ) from exc
    report = apply_plan(cube.path, cube.grid, cube.group, plan, needed, resampling,
                        threads=threads, progress=progress, before_commit=before_commit,
                        version=version)
    return plan, report
