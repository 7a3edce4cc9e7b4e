"""Pure planning: which time slot each product goes to and which chunks must be (re)computed.

No I/O here (the rechunker habit): given what is published and what arrives, ``plan_write``
returns the new time axis, how old time indices move, and for every touched time step the
full list of contributing products and the spatial chunks to recompute. Property tests check
its invariants (sorted unique axis, arrival-order independence, coverage).

DESIGN CHOICE: a time step's content is a pure function of the *set* of products in it. A late
tile or a reprocessed product never merges into stored pixels; the affected chunks are
recomputed from all products of that datatake. That is what makes the cube independent of
arrival order and makes re-runs idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Mapping, Sequence

from ingest.grid import ChunkIndex
from ingest.products.names import format_rank

DatatakeKey = tuple[datetime, str]  # (datatake sensing start, platform): sorts by time first


@dataclass(frozen=True)
class PlannedProduct:
    """What planning needs to know about one product (derived from its metadata and the grid)."""

    name: str
    datatake: DatatakeKey
    tile: str
    epsg: int
    baseline: str
    generation_time: datetime
    chunks: frozenset[ChunkIndex] = field(default_factory=frozenset)

    @property
    def version_key(self) -> tuple[str, datetime, int]:
        """Newer baseline, then newer generation time, wins (DESIGN.md §4 reprocessing); the
        same processing in two formats: the preferred one (``names.FORMAT_PREFERENCE``)."""
        # to the second, as the name's discriminator and the catalog have it: a format that
        # records sub-second generation times must not win over one that does not
        return (self.baseline, self.generation_time.replace(microsecond=0), format_rank(self.name))


@dataclass(frozen=True)
class SlotWrite:
    """One time step to write: where it goes, what forms it, which chunks to recompute."""

    datatake: DatatakeKey
    index: int
    products: tuple[PlannedProduct, ...]  # every product of the datatake, highest priority first
    chunks: frozenset[ChunkIndex]
    is_new: bool


@dataclass(frozen=True)
class WritePlan:
    axis: tuple[DatatakeKey, ...]  # the new, sorted, unique time axis
    old_to_new: dict[int, int]  # published index -> index after this write
    slots: tuple[SlotWrite, ...]  # sorted by index
    superseded: tuple[str, ...]  # product names replaced by a newer version
    base_version: int = 0  # the store version whose published state this plan was made from

    @property
    def is_empty(self) -> bool:
        return not self.slots

    def changed_steps(self) -> set[int]:
        """Indices (after this write) of the time steps whose content changes: the written
        slots and every published step that moves (derived data follows exactly these)."""
        return {s.index for s in self.slots} | {n for o, n in self.old_to_new.items() if o != n}

    @property
    def shifts(self) -> bool:
        """True when published time steps move (a late datatake was inserted)."""
        return any(o != n for o, n in self.old_to_new.items())


def priority_key(product: PlannedProduct, majority_epsg: int) -> tuple:
    """Mosaic priority: lower sorts first and wins where several products have data.

    DESIGN CHOICE: a tile in the grid's majority UTM zone beats one reprojected from the
    neighbouring zone (less resampling distortion), then the tile id decides; both are
    properties of the product, never of the arrival order.
    """
    return (product.epsg != majority_epsg, product.tile, product.name)


def select_current(products: Iterable[PlannedProduct]) -> tuple[list[PlannedProduct], list[PlannedProduct]]:
    """Keep the newest version of each (datatake, tile); return (current, superseded)."""
    best: dict[tuple[DatatakeKey, str], PlannedProduct] = {}
    losers: list[PlannedProduct] = []
    for p in sorted(products, key=lambda p: (p.datatake, p.tile, p.version_key, p.name)):
        key = (p.datatake, p.tile)
        if key in best:
            losers.append(best[key])
        best[key] = p
    return list(best.values()), losers


def plan_write(
    published: Mapping[DatatakeKey, Sequence[PlannedProduct]],
    incoming: Sequence[PlannedProduct],
    majority_epsg: int,
    base_version: int = 0,
) -> WritePlan:
    """Plan one commit. ``published`` maps each stored time step to its products, as read at
    store version ``base_version`` (the plan carries it; the writer refuses a plan whose base
    is not the version it holds under the lock)."""
    old_axis = sorted(published)
    published_names = {p.name for ps in published.values() for p in ps}
    fresh = [p for p in incoming if p.name not in published_names]
    everything = [p for ps in published.values() for p in ps] + fresh
    current, losers = select_current(everything)
    superseded = sorted(p.name for p in losers if p.name in published_names or p in fresh)
    current_names = {p.name for p in current}

    by_datatake: dict[DatatakeKey, list[PlannedProduct]] = {}
    for p in current:
        by_datatake.setdefault(p.datatake, []).append(p)
    axis = tuple(sorted(set(old_axis) | set(by_datatake)))
    index = {k: i for i, k in enumerate(axis)}
    old_to_new = {i: index[k] for i, k in enumerate(old_axis)}

    changed: dict[DatatakeKey, set[ChunkIndex]] = {}
    for p in fresh:
        if p.name in current_names:
            changed.setdefault(p.datatake, set()).update(p.chunks)
    for p in losers:
        if p.name in published_names:  # its pixels must go: recompute where it was
            changed.setdefault(p.datatake, set()).update(p.chunks)

    slots = []
    for key, chunks in changed.items():
        members = sorted(by_datatake.get(key, []), key=lambda p: priority_key(p, majority_epsg))
        slots.append(SlotWrite(key, index[key], tuple(members), frozenset(chunks), key not in published))
    slots.sort(key=lambda s: s.index)
    return WritePlan(axis, old_to_new, tuple(slots), tuple(superseded), base_version)
