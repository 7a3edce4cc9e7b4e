"""Read-only queries for ``s2ingest status`` and friends. Plain dataclasses out; the CLI formats."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from ingest.products.names import strip_product_suffix

from .models import HubEvent, Layer, Product, Publish, TimeStep
from .states import ALL_STATES, LEASED_STATES, State
from .work import db_now

P = Product


@dataclass(frozen=True)
class PublishInfo:
    version: int
    group: str
    published_at: datetime
    n_time_steps: int
    n_chunks_written: int
    n_products: int
    manifest_path: str | None


@dataclass(frozen=True)
class VersionInfo:
    """One cube version with its manifest summary (None where it was never recorded)."""

    version: int
    group: str
    parent_version: int | None
    manifest_sha256: str | None
    n_keys: int | None
    changes: list[dict] | None  # [{"key", "size", "sha256"}], size/sha256 None: key removed
    created_at: datetime
    published_at: datetime
    worker: str | None
    reconciled: bool  # the row was written by reconcile_published, not by its publish


@dataclass(frozen=True)
class ProblemInfo:
    """A failed, rejected or offline product and why."""

    name: str
    state: str
    reason: str | None
    attempts: int
    next_attempt_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class SupersededInfo:
    name: str
    superseded_by: str | None
    was_published: bool  # its data is (or was) in the cube and must be replaced
    updated_at: datetime


@dataclass(frozen=True)
class DeletedInfo:
    name: str
    seen_at: datetime
    state: str | None  # None: a product we never catalogued


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    state: str
    owner: str | None
    expires_at: datetime | None
    expired: bool


@dataclass(frozen=True)
class LayerInfo:
    group: str
    name: str
    edition: str
    source_name: str
    sha256: str
    attribute: str | None
    version: int
    added_at: datetime


@dataclass(frozen=True)
class CatalogStatus:
    counts: dict[str, int]  # every state, zeros included
    due: int  # products a claim could take now
    time_steps: dict[str, int]  # group -> published time steps
    last_publish: PublishInfo | None
    problems: list[ProblemInfo] = field(default_factory=list)
    superseded: list[SupersededInfo] = field(default_factory=list)
    deleted_from_hub: list[DeletedInfo] = field(default_factory=list)
    leases: list[LeaseInfo] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def state_counts(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(ALL_STATES, 0)
    for state, n in session.execute(select(P.state, func.count()).group_by(P.state)):
        counts[state] = n
    return counts


def due_count(session: Session, now: datetime) -> int:
    """Products waiting for work whose time has come (what the next claims will see)."""
    waiting = (State.DISCOVERED.value, State.DOWNLOADED.value, State.FAILED.value, State.OFFLINE.value)
    due = (P.next_attempt_at.is_(None)) | (P.next_attempt_at <= now)
    lapsed = P.state.in_(sorted(LEASED_STATES)) & (P.lease_expires_at <= now)
    return session.scalar(select(func.count()).where((P.state.in_(waiting) & due) | lapsed)) or 0


def time_step_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(TimeStep.group_path, func.count()).group_by(TimeStep.group_path))
    return dict(sorted((g, n) for g, n in rows))


def last_publish(session: Session, group: str | None = None) -> PublishInfo | None:
    stmt = select(Publish).order_by(Publish.version.desc()).limit(1)
    if group is not None:
        stmt = stmt.where(Publish.group_path == group)
    pub = session.scalar(stmt)
    if pub is None:
        return None
    return PublishInfo(
        version=pub.version, group=pub.group_path, published_at=pub.published_at,
        n_time_steps=pub.n_time_steps, n_chunks_written=pub.n_chunks_written,
        n_products=len(pub.products), manifest_path=pub.manifest_path,
    )


def versions(session: Session, limit: int = 50, *, group: str | None = None) -> list[VersionInfo]:
    """The newest ``limit`` cube versions (optionally of one group), newest first."""
    stmt = select(Publish).order_by(Publish.version.desc()).limit(limit)
    if group is not None:
        stmt = stmt.where(Publish.group_path == group)
    return [
        VersionInfo(p.version, p.group_path, p.parent_version, p.manifest_sha256, p.n_keys,
                    p.changes, p.created_at, p.published_at, p.worker, p.reconciled)
        for p in session.scalars(stmt)
    ]


def problems(session: Session, limit: int = 50) -> list[ProblemInfo]:
    """Failed, rejected and offline products, most recent first."""
    rows = session.scalars(
        select(P).where(P.state.in_([State.FAILED.value, State.REJECTED.value, State.OFFLINE.value]))
        .order_by(P.updated_at.desc(), P.id.desc()).limit(limit)
    )
    return [ProblemInfo(p.name, p.state, p.reason, p.attempts, p.next_attempt_at, p.updated_at) for p in rows]


def superseded(session: Session, limit: int = 50) -> list[SupersededInfo]:
    Newer = aliased(P)
    rows = session.execute(
        select(P, Newer.name).outerjoin(Newer, Newer.id == P.superseded_by)
        .where(P.state == State.SUPERSEDED.value)
        .order_by(P.updated_at.desc(), P.id.desc()).limit(limit)
    )
    return [SupersededInfo(p.name, by, p.published_version is not None, p.updated_at) for p, by in rows]


def deleted_from_hub(session: Session, limit: int = 50) -> list[DeletedInfo]:
    rows = session.execute(
        select(HubEvent.product_name, HubEvent.seen_at, P.state)
        .outerjoin(P, P.name == HubEvent.product_name)
        .where(HubEvent.kind == "deleted")
        .order_by(HubEvent.seen_at.desc(), HubEvent.id.desc()).limit(limit)
    )
    return [DeletedInfo(n, t, s) for n, t, s in rows]


def active_leases(session: Session, now: datetime) -> list[LeaseInfo]:
    rows = session.scalars(
        select(P).where(P.state.in_(sorted(LEASED_STATES))).order_by(P.lease_expires_at, P.id)
    )
    return [
        LeaseInfo(p.name, p.state, p.lease_owner, p.lease_expires_at,
                  p.lease_expires_at is None or p.lease_expires_at <= now)
        for p in rows
    ]


def layers(session: Session, group: str | None = None) -> list[LayerInfo]:
    stmt = select(Layer).order_by(Layer.group_path, Layer.name, Layer.edition)
    if group is not None:
        stmt = stmt.where(Layer.group_path == group)
    return [
        LayerInfo(x.group_path, x.name, x.edition, x.source_name, x.sha256, x.attribute, x.version, x.added_at)
        for x in session.scalars(stmt)
    ]


def status(session: Session, *, limit: int = 50, now: datetime | None = None) -> CatalogStatus:
    """Everything ``s2ingest status`` shows, in one read."""
    now = db_now(session, now)
    return CatalogStatus(
        counts=state_counts(session),
        due=due_count(session, now),
        time_steps=time_step_counts(session),
        last_publish=last_publish(session),
        problems=problems(session, limit),
        superseded=superseded(session, limit),
        deleted_from_hub=deleted_from_hub(session, limit),
        leases=active_leases(session, now),
    )


def get_product(session: Session, name: str) -> Product | None:
    """A product by name (``.SAFE``/``.zip`` suffixes and directories ignored)."""
    return session.scalar(select(P).where(P.name == strip_product_suffix(name)))
