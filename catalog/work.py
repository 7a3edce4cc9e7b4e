"""Claiming work and moving products between states: every change is one guarded UPDATE.

The procrastinate habit (STYLE.md): a claim is one statement that picks due rows and stamps
them with a lease; a worker reports back only through UPDATEs guarded by that lease, so a
worker whose lease lapsed and was taken over cannot publish (``LeaseLostError``).

None of these functions commits: the caller's transaction (``catalog.db.session_scope``) does.
Every function takes ``now`` for tests; by default the clock is the database's (PostgreSQL,
shared by all machines) or this machine's (SQLite, which lives on a local disk anyway).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, case, func, literal, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ingest.errors import CatalogError, LeaseLostError

from .models import Product
from .states import (
    LEASED_STATES,
    RELEASE_TO,
    TRANSITIONS,
    Guard,
    State,
    backoff,
    guard,
    validate_state,
)

P = Product


# --------------------------------------------------------------------------- clock

def db_now(session: Session, now: datetime | None = None) -> datetime:
    """The time to stamp and compare leases with (tz-aware UTC).

    DESIGN CHOICE: on PostgreSQL the database clock, so workers on several machines agree on
    when a lease lapses whatever their own clocks say; on SQLite the local clock.
    """
    if now is not None:
        if now.tzinfo is None:
            raise ValueError("now must be tz-aware (UTC)")
        return now.astimezone(timezone.utc)
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(select(func.clock_timestamp())).scalar_one()
        return value.astimezone(timezone.utc)
    return datetime.now(timezone.utc)


def _seconds(value: timedelta | float | int) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def _ids(product_ids: int | Iterable[int]) -> list[int]:
    ids = [product_ids] if isinstance(product_ids, int) else list(dict.fromkeys(product_ids))
    if not all(isinstance(i, int) for i in ids):
        raise TypeError("product ids must be ints")
    return ids


# --------------------------------------------------------------------------- transitions

def _guard_clause(to_state: str, worker: str | None, now: datetime) -> ColumnElement[bool]:
    """WHERE clause allowing exactly the table's non-claim transitions into ``to_state``."""
    free = sorted(f for (f, t), g in TRANSITIONS.items() if t == to_state and g is Guard.FREE)
    leased = sorted(f for (f, t), g in TRANSITIONS.items() if t == to_state and g is Guard.LEASE)
    clauses: list[ColumnElement[bool]] = []
    if free:
        clauses.append(P.state.in_(free))
    if leased and worker is not None:
        clauses.append(and_(P.state.in_(leased), P.lease_owner == worker, P.lease_expires_at > now))
    return or_(*clauses) if clauses else literal(False)


def _clear_lease(to_state: str) -> dict[str, Any]:
    return {} if to_state in LEASED_STATES else {"lease_owner": None, "lease_expires_at": None}


def _explain(session: Session, ids: Sequence[int], to_state: str, worker: str | None) -> list[int]:
    """Why the guarded UPDATE skipped these rows: raise for real errors; return benign no-ops."""
    rows = {r.id: r for r in session.execute(
        select(P.id, P.name, P.state, P.lease_owner, P.lease_expires_at).where(P.id.in_(ids))
    )}
    for pid in ids:
        if pid not in rows:
            raise CatalogError(f"no product with id {pid} in the catalog")
    needs_lease = any(t == to_state and g is Guard.LEASE for (_, t), g in TRANSITIONS.items())
    noops: list[int] = []
    for pid in ids:
        r = rows[pid]
        g = guard(r.state, to_state)
        if worker is None and r.state == to_state:
            noops.append(pid)  # e.g. rejecting a rejected product: idempotent
        elif worker is not None and needs_lease and g is not Guard.FREE:
            # DESIGN CHOICE: whatever the row looks like now (reclaimed, published by another
            # worker, superseded, released), a worker report that the lease guard refused
            # means one thing to that worker: this product is no longer yours.
            raise LeaseLostError(
                f"product {r.name}: worker {worker} holds no lease, {r.state} -> {to_state} refused "
                f"(lease: {r.lease_owner or 'nobody'} until {r.lease_expires_at})"
            )
        elif g is None:
            raise CatalogError(f"product {r.name}: illegal transition {r.state} -> {to_state}")
        elif g is Guard.CLAIM:
            raise CatalogError(f"product {r.name}: {r.state} -> {to_state} happens only through claim()")
        elif g is Guard.LEASE:
            raise CatalogError(
                f"product {r.name}: {r.state} -> {to_state} is for the lease holder "
                f"({r.lease_owner or 'nobody'}) to report"
            )
        else:
            noops.append(pid)  # a concurrent change got there first
    return noops


def transition(
    session: Session,
    product_ids: int | Iterable[int],
    to_state: str | State,
    *,
    worker: str | None = None,
    now: datetime | None = None,
    all_or_nothing: bool = True,
    **values: Any,
) -> list[int]:
    """Move products to ``to_state`` with one guarded UPDATE; returns the ids that moved.

    Legal from-states come from ``states.TRANSITIONS``. With ``worker``, transitions out of a
    leased state require that worker's live lease (else ``LeaseLostError``); without, only
    "free" transitions run. Illegal transitions raise ``CatalogError`` naming both states.
    With ``all_or_nothing`` a failure for one id leaves every id unchanged (a savepoint).
    """
    to = validate_state(to_state)
    ids = _ids(product_ids)
    if not ids:
        return []
    now = db_now(session, now)
    stmt = (
        update(P)
        .where(P.id.in_(ids), _guard_clause(to, worker, now))
        .values(state=to, updated_at=now, **_clear_lease(to), **values)
        .returning(P.id)
        .execution_options(synchronize_session=False)
    )
    nested = session.begin_nested() if all_or_nothing and len(ids) > 1 else None
    try:
        moved = list(session.scalars(stmt))
        missing = [i for i in ids if i not in set(moved)]
        if missing:
            _explain(session, missing, to, worker)
    except BaseException:
        if nested is not None:
            nested.rollback()
        raise
    if nested is not None:
        nested.commit()
    _expire(session, moved)
    return moved


def _expire(session: Session, ids: Iterable[int]) -> None:
    """Loaded Product objects are stale after a bulk UPDATE; reload them on next access."""
    wanted = set(ids)
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Product) and obj.id in wanted:
            session.expire(obj)


# --------------------------------------------------------------------------- claims

def _claimable(from_states: Sequence[str], to_state: str, now: datetime, orbit: int | None) -> ColumnElement[bool]:
    due = or_(P.next_attempt_at.is_(None), P.next_attempt_at <= now)
    plain = [f for f in from_states if f not in (State.FAILED.value, to_state)]
    clauses: list[ColumnElement[bool]] = []
    if plain:
        clauses.append(and_(P.state.in_(plain), due))
    if State.FAILED.value in from_states:
        # DESIGN CHOICE: a failure is retried by the stage it failed in (failed_stage), so a
        # product that failed to ingest is not downloaded again.
        clauses.append(and_(P.state == State.FAILED.value, P.failed_stage == to_state, due))
    # A crashed worker's rows: still in the working state, lease lapsed.
    clauses.append(and_(P.state == to_state, or_(P.lease_expires_at.is_(None), P.lease_expires_at <= now)))
    where = or_(*clauses)
    return and_(where, P.relative_orbit == orbit) if orbit is not None else where


def claim(
    session: Session,
    *,
    from_states: Iterable[str | State],
    to_state: str | State,
    worker: str,
    lease_seconds: float | timedelta,
    limit: int = 1,
    orbit: int | None = None,
    now: datetime | None = None,
) -> list[Product]:
    """Claim up to ``limit`` due products for ``worker``, in one guarded statement.

    Picks rows in ``from_states`` whose ``next_attempt_at`` has come (failed rows only for the
    stage they failed in) and rows of ``to_state`` whose lease lapsed, oldest datatake first,
    and stamps them ``to_state`` with a lease until now + ``lease_seconds``. Commit promptly:
    the claim holds nothing until it is committed.
    """
    to = validate_state(to_state)
    froms = sorted({validate_state(f) for f in from_states})
    if to not in LEASED_STATES:
        raise CatalogError(f"claim() leads into a working state ({', '.join(sorted(LEASED_STATES))}), not {to}")
    for f in froms:
        if f != to and guard(f, to) is not Guard.CLAIM:
            raise CatalogError(f"cannot claim products from {f} into {to}")
    if not worker:
        raise CatalogError("claim() needs a worker name")
    if limit < 1:
        return []
    now = db_now(session, now)
    values = {
        "state": to,
        "lease_owner": worker,
        "lease_expires_at": now + _seconds(lease_seconds),
        "next_attempt_at": None,
        "updated_at": now,
        # A reclaim (the previous holder crashed or hung) counts as a failed attempt.
        "attempts": P.attempts + case((P.state == to, 1), else_=0),
        "reason": case((P.state == to, literal("lease expired; reclaimed")), else_=P.reason),
    }
    candidates = (
        select(P.id)
        .where(_claimable(froms, to, now, orbit))
        .order_by(P.datatake_start, P.tile, P.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # DESIGN CHOICE: lock candidates with SKIP LOCKED in a CTE (PostgreSQL never inlines a
        # locking CTE), so concurrent claimers each take different rows without waiting.
        cte = candidates.with_for_update(skip_locked=True).cte("candidates")
        stmt = update(P).where(P.id == cte.c.id)
    else:
        # SQLite: the transaction already holds the write lock (BEGIN IMMEDIATE, catalog.db).
        stmt = update(P).where(P.id.in_(candidates.scalar_subquery()))
    stmt = stmt.values(**values).returning(P.id).execution_options(synchronize_session=False)
    ids = list(session.scalars(stmt))
    if not ids:
        return []
    _expire(session, ids)
    return list(session.scalars(
        select(P).where(P.id.in_(ids)).order_by(P.datatake_start, P.tile, P.id)
        .execution_options(populate_existing=True)
    ))


def renew_lease(
    session: Session,
    product_ids: int | Iterable[int],
    worker: str,
    lease_seconds: float | timedelta,
    *,
    now: datetime | None = None,
) -> datetime:
    """Extend ``worker``'s leases (a heartbeat); LeaseLostError (and no change) if any was lost."""
    ids = _ids(product_ids)
    now = db_now(session, now)
    expires = now + _seconds(lease_seconds)
    stmt = (
        update(P)
        .where(P.id.in_(ids), P.state.in_(sorted(LEASED_STATES)),
               P.lease_owner == worker, P.lease_expires_at > now)
        .values(lease_expires_at=expires, updated_at=now)
        .returning(P.id)
        .execution_options(synchronize_session=False)
    )
    nested = session.begin_nested()
    renewed = set(session.scalars(stmt))
    lost = [i for i in ids if i not in renewed]
    if lost:
        nested.rollback()
        names = session.scalars(select(P.name).where(P.id.in_(lost))).all()
        raise LeaseLostError(f"worker {worker} lost its lease on {', '.join(names) or lost}")
    nested.commit()
    _expire(session, ids)
    return expires


def release(
    session: Session, product_ids: int | Iterable[int], worker: str, *, now: datetime | None = None
) -> list[int]:
    """Give claimed work back unfinished (shutdown): downloading -> discovered, ingesting ->
    downloaded, lease cleared, due at once. Leases already lost are skipped, not an error."""
    ids = _ids(product_ids)
    now = db_now(session, now)
    back = case(*[(P.state == f, literal(t)) for f, t in RELEASE_TO.items()], else_=P.state)
    stmt = (
        update(P)
        .where(P.id.in_(ids), P.state.in_(sorted(RELEASE_TO)), P.lease_owner == worker, P.lease_expires_at > now)
        .values(state=back, lease_owner=None, lease_expires_at=None, next_attempt_at=None, updated_at=now)
        .returning(P.id)
        .execution_options(synchronize_session=False)
    )
    moved = list(session.scalars(stmt))
    _expire(session, moved)
    return moved


def release_worker(session: Session, worker: str, *, now: datetime | None = None) -> list[int]:
    """Give back every product ``worker`` holds a lease on (a run stopped by Ctrl-C or an error):
    the same as ``release`` for all of its ids."""
    ids = list(session.scalars(select(P.id).where(P.lease_owner == worker, P.state.in_(sorted(RELEASE_TO)))))
    return release(session, ids, worker, now=now) if ids else []


# --------------------------------------------------------------------------- what workers report

def mark_downloaded(
    session: Session,
    product_id: int,
    worker: str,
    *,
    local_path: str,
    size_bytes: int | None = None,
    now: datetime | None = None,
) -> None:
    """The download is verified and in the product cache; the ingest stage may claim it."""
    values: dict[str, Any] = {"local_path": str(local_path), "attempts": 0, "failed_stage": None, "reason": None}
    if size_bytes is not None:
        values["size_bytes"] = size_bytes
    transition(session, product_id, State.DOWNLOADED, worker=worker, now=now, **values)


def mark_published(
    session: Session,
    product_ids: int | Iterable[int],
    worker: str,
    version: int,
    *,
    now: datetime | None = None,
) -> list[int]:
    """Mark products published in ``version``: all of them or, if any lease was lost, none
    (``LeaseLostError``). The last step of the commit protocol (DESIGN.md §5)."""
    now = db_now(session, now)
    return transition(
        session, product_ids, State.PUBLISHED, worker=worker, now=now, all_or_nothing=True,
        published_version=version, published_at=now, failed_stage=None, reason=None, next_attempt_at=None,
    )


def mark_failed(
    session: Session,
    product_id: int,
    worker: str,
    reason: str,
    retry_in: timedelta | float | None = None,
    *,
    now: datetime | None = None,
) -> datetime:
    """A retryable failure: back off (exponentially unless ``retry_in``) and try again later.
    Returns when the product is due again."""
    now = db_now(session, now)
    row = session.execute(select(P.attempts, P.state).where(P.id == product_id)).first()
    attempts = (row.attempts if row else 0) + 1
    due = now + (_seconds(retry_in) if retry_in is not None else backoff(attempts))
    transition(
        session, product_id, State.FAILED, worker=worker, now=now,
        attempts=P.attempts + 1, next_attempt_at=due, failed_stage=P.state, reason=str(reason),
    )
    return due


def mark_rejected(
    session: Session,
    product_id: int,
    reason: str,
    *,
    worker: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Permanently refuse a product (bad archive, wrong orbit, deleted from the hub...).

    The worker holding it passes ``worker``; others (operator, discovery) may reject products
    that nobody works on. False if it was rejected already.
    """
    moved = transition(
        session, product_id, State.REJECTED, worker=worker, now=now,
        reason=str(reason), next_attempt_at=None,
    )
    return bool(moved)


def mark_offline(
    session: Session,
    product_id: int,
    worker: str,
    retry_in: timedelta | float = timedelta(hours=1),
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> datetime:
    """The hub has the product in its long-term archive; it was requested: look again later.
    Not a failure: attempts are not counted."""
    now = db_now(session, now)
    due = now + _seconds(retry_in)
    transition(
        session, product_id, State.OFFLINE, worker=worker, now=now,
        next_attempt_at=due, online=False, reason=reason or "offline at the hub (long-term archive)",
    )
    return due
