"""``s2ingest verify``: the catalog against the store, and the store against its manifest.

The store is the truth for what readers see; the catalog must agree with it: every product
it calls published is in a published time step, the catalog's time steps are the store's
axis, and the store's version has its publish row (DESIGN.md §5).
"""
from __future__ import annotations

from typing import Callable, Iterator

from ingest.store import CubeStore
from ingest.store.verify import imagery_groups, verify_store


def check_catalog(store: CubeStore, engine) -> Iterator[str]:
    """Mismatches between the catalog behind ``engine`` and the published store."""
    from sqlalchemy import select

    from catalog import session_scope
    from catalog.models import Product, Publish, TimeStep

    version = store.version()
    groups = imagery_groups(store)
    with session_scope(engine) as s:
        for group in groups:
            state = store.published(group)
            gpath = f"/{group}"
            orbit = int(group.rsplit("R", 1)[-1])
            in_store = {n for names in state.products for n in names}
            rows = s.scalars(select(Product).where(Product.relative_orbit == orbit)).all()
            by_name = {r.name: r for r in rows}
            for r in rows:
                if r.state == "published" and r.name not in in_store:
                    yield f"{r.name}: published in the catalog, but in no time step of {gpath}"
            for name in sorted(in_store):
                row = by_name.get(name)
                if row is None:
                    yield f"{name}: in {gpath} but unknown to the catalog"
                elif row.state not in ("published", "superseded"):
                    yield f"{name}: in {gpath} but {row.state} in the catalog"
            steps = {(t.time.replace(tzinfo=None), t.platform) for t in
                     s.scalars(select(TimeStep).where(TimeStep.group_path == gpath))}
            axis = {(t.replace(tzinfo=None), p) for t, p in zip(state.times, state.platforms)}
            for t, p in sorted(axis - steps):
                yield f"{gpath}: time step {t:%Y-%m-%dT%H:%M:%S} {p} is published but not in the catalog"
            for t, p in sorted(steps - axis):
                yield f"{gpath}: the catalog lists time step {t:%Y-%m-%dT%H:%M:%S} {p}, the store does not"
        if version and s.scalar(select(Publish).where(Publish.version == version)) is None:
            yield f"the catalog has no publish row for the store's version {version}"


def verify(store: CubeStore, engine=None, *, deep: bool = False,
           progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Every problem found (empty: all good)."""
    problems = verify_store(store, deep=deep, progress=progress)
    if engine is not None:
        problems += list(check_catalog(store, engine))
    return problems
