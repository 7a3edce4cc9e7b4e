"""Recording what the hubs offer: discovery, reprocessing (supersede) and hub drift."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from ingest.errors import CatalogError
from ingest.products.names import FORMAT_PREFERENCE, ProductName

from .models import HUBS, HubEvent, Product
from .states import TERMINAL_STATES, State
from .work import _expire, _ids, db_now, transition

P = Product


@dataclass(frozen=True)
class ProductRecord:
    """What a source knows about a product before downloading it (DESIGN.md §7).

    Identity fields not given are read from the product name; ``generation_time`` defaults to
    the name's discriminator (for L2A products the generation time to the second).
    """

    name: str
    hub: str = "local"
    hub_id: str | None = None
    checksum_algorithm: str | None = None
    checksum_value: str | None = None
    size_bytes: int | None = None
    cloud_cover: float | None = None
    online: bool | None = None
    local_path: str | None = None
    datatake_id: str | None = None
    generation_time: datetime | None = None

    @classmethod
    def coerce(cls, obj: Any) -> "ProductRecord":
        """Accept a ProductRecord, a mapping, or any object with matching attributes (e.g. an
        ``ingest.products.model.Product``, whose ``source`` becomes ``local_path``)."""
        if isinstance(obj, ProductRecord):
            return obj
        if isinstance(obj, str):
            return cls(name=obj)
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
        kwargs = {f.name: get(f.name, None) for f in fields(cls)}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if "local_path" not in kwargs and get("source", None) is not None:
            kwargs["local_path"] = str(get("source"))
        if "name" not in kwargs:
            raise CatalogError(f"product record without a name: {obj!r}")
        if isinstance(kwargs.get("local_path"), Path):
            kwargs["local_path"] = str(kwargs["local_path"])
        return cls(**kwargs)


@dataclass(frozen=True)
class Replacement:
    """A published product superseded by a newer one: the ingest must replace its data."""

    superseded_id: int
    superseded_name: str
    published_version: int
    by_id: int
    by_name: str
    by_state: str
    group: str
    datatake_start: datetime
    tile: str


def _upsert(session: Session, table) -> Any:
    """The dialect's INSERT with ON CONFLICT (its module imported on first use: a catalog only
    ever loads its own database's dialect)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover
        raise CatalogError(f"unsupported catalog database: {dialect}")
    return insert(table)


def _insert(session: Session) -> Any:
    return _upsert(session, P.__table__)


def _row(rec: ProductRecord, now: datetime) -> dict[str, Any]:
    pn = ProductName.parse(rec.name)
    if rec.hub not in HUBS:
        raise CatalogError(f"product {pn.name}: unknown hub {rec.hub!r} (one of {', '.join(HUBS)})")
    return {
        "name": pn.name, "platform": pn.platform, "datatake_start": pn.datatake_start,
        "datatake_id": rec.datatake_id, "tile": pn.tile, "relative_orbit": pn.relative_orbit,
        "baseline": pn.baseline, "generation_time": rec.generation_time or pn.discriminator, "format": pn.format,
        "hub": rec.hub, "hub_id": rec.hub_id, "hub_checksum_algorithm": rec.checksum_algorithm,
        "hub_checksum_value": rec.checksum_value, "size_bytes": rec.size_bytes,
        "cloud_cover": rec.cloud_cover, "online": rec.online, "local_path": rec.local_path,
        "state": State.DISCOVERED.value, "attempts": 0, "created_at": now, "updated_at": now,
    }


def record_discovered(
    session: Session,
    records: Iterable[ProductRecord | Mapping[str, Any] | Any],
    *,
    now: datetime | None = None,
    supersede: bool = True,
) -> tuple[list[str], list[str]]:
    """Insert each product once; returns (new names, known names).

    Idempotent by name and by identity (INSERT ... ON CONFLICT DO NOTHING on both unique
    constraints), also between concurrent discoverers. With ``supersede`` the reprocessing rule
    runs for the touched datatake/tiles at once, so a product older than a published one never
    becomes work. Published products it supersedes are listed by ``pending_replacements``.
    """
    now = db_now(session, now)
    insert = _insert(session)
    new: list[str] = []
    known: list[str] = []
    keys: set[tuple[str, datetime, str]] = set()
    changed: list[tuple[int, dict[str, Any]]] = []
    for obj in records:
        row = _row(ProductRecord.coerce(obj), now)
        stmt = insert.values(**row).on_conflict_do_nothing().returning(P.__table__.c.id)
        inserted = session.execute(stmt).first()
        if inserted is None:
            again = _changed_rejection(session, row)
            if again is not None:
                changed.append(again)
                inserted = (again[0],)
        (new if inserted is not None else known).append(row["name"])
        if inserted is not None:
            keys.add((row["platform"], row["datatake_start"], row["tile"]))
    for pid, facts in changed:
        requeue(session, pid, now=now, **facts)
    if supersede and keys:
        apply_supersede(session, keys=keys, now=now)
    return new, known


def _changed_rejection(session: Session, row: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """A rejected product whose file is not the one rejected (another size or checksum, or a
    local file modified after the rejection): (id, new facts) to make it a candidate again."""
    old = session.execute(select(P.id, P.state, P.size_bytes, P.hub_checksum_value, P.updated_at)
                          .where(P.name == row["name"])).first()
    if old is None or old.state != State.REJECTED.value:
        return None
    differs = (row["size_bytes"] is not None and old.size_bytes is not None and row["size_bytes"] != old.size_bytes) \
        or (row["hub_checksum_value"] and old.hub_checksum_value and row["hub_checksum_value"] != old.hub_checksum_value)
    if not differs and row["local_path"]:
        try:
            mtime = datetime.fromtimestamp(Path(row["local_path"]).stat().st_mtime, timezone.utc)
        except OSError:
            return None
        differs = old.updated_at is not None and mtime > old.updated_at
    if not differs:
        return None
    facts = {k: row[k] for k in ("size_bytes", "hub_checksum_algorithm", "hub_checksum_value", "local_path",
                                 "hub_id") if row[k] is not None}
    return old.id, facts


def _newness(p: Product) -> tuple[str, datetime, int, int]:
    # Baselines are zero-padded ("04.00" < "05.09"), so text order is version order. The same
    # processing in two formats: the preferred format wins (names.FORMAT_PREFERENCE), never the
    # one that arrived first; the id only separates rows that are equal in all of these.
    return (p.baseline, p.generation_time, FORMAT_PREFERENCE.get(p.format, 0), p.id)


def apply_supersede(
    session: Session,
    *,
    keys: Iterable[tuple[str, datetime, str]] | None = None,
    now: datetime | None = None,
) -> list[Replacement]:
    """For each (platform, datatake_start, tile), the newest product (baseline, then generation
    time, then the preferred format) supersedes all the others, whatever their state and
    whatever the arrival order.

    Rejected products take no part (a broken reprocessing must not hide a good product) and
    a superseded product is never revived. Returns the published products superseded by this
    call: the ingest must rewrite their time step with the newer product.
    """
    now = db_now(session, now)
    stmt = select(P).where(P.state != State.REJECTED.value).order_by(P.id)
    key_list = list(keys) if keys is not None else None
    if key_list is not None:
        if not key_list:
            return []
        stmt = stmt.where(or_(*[
            and_(P.platform == k[0], P.datatake_start == k[1], P.tile == k[2]) for k in key_list
        ]))
    else:
        dup = (
            select(P.platform, P.datatake_start, P.tile)
            .where(P.state != State.REJECTED.value)
            .group_by(P.platform, P.datatake_start, P.tile)
            .having(func.count() > 1)
            .subquery()
        )
        stmt = stmt.join(dup, and_(
            P.platform == dup.c.platform, P.datatake_start == dup.c.datatake_start, P.tile == dup.c.tile
        ))
    groups: dict[tuple[str, datetime, str], list[Product]] = defaultdict(list)
    for p in session.scalars(stmt.execution_options(populate_existing=True)):
        groups[(p.platform, p.datatake_start, p.tile)].append(p)
    replaced: list[Replacement] = []
    for members in groups.values():
        if len(members) > 1:
            replaced.extend(_supersede_group(session, members, now))
    return replaced


def _supersede_group(session: Session, members: list[Product], now: datetime) -> list[Replacement]:
    winner = max(members, key=_newness)
    replaced: list[Replacement] = []
    for loser in members:
        if loser is winner:
            continue
        if loser.state == State.SUPERSEDED.value:
            if loser.superseded_by != winner.id:  # point chains at the newest product
                session.execute(
                    update(P).where(P.id == loser.id, P.state == State.SUPERSEDED.value)
                    .values(superseded_by=winner.id, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            continue
        if loser.state in TERMINAL_STATES:
            continue
        moved = transition(
            session, loser.id, State.SUPERSEDED, now=now,
            superseded_by=winner.id, reason=f"superseded by {winner.name}", next_attempt_at=None,
        )
        if moved and loser.published_version is not None:
            replaced.append(_replacement(loser, winner))
    _expire(session, [m.id for m in members])
    return replaced


def _replacement(old: Product, new: Product) -> Replacement:
    assert old.published_version is not None
    return Replacement(
        superseded_id=old.id, superseded_name=old.name, published_version=old.published_version,
        by_id=new.id, by_name=new.name, by_state=new.state, group=old.group,
        datatake_start=old.datatake_start, tile=old.tile,
    )


def pending_replacements(session: Session) -> list[Replacement]:
    """Published products that were superseded by a product not yet published itself.

    DESIGN CHOICE: derived from the catalog, not remembered from apply_supersede's return
    value, so a crash between supersede and re-ingest loses nothing.
    """
    New = P.__table__.alias("newer")
    rows = session.execute(
        select(P, New.c.id, New.c.name, New.c.state)
        .join(New, New.c.id == P.superseded_by)
        .where(P.state == State.SUPERSEDED.value, P.published_version.is_not(None),
               New.c.state != State.PUBLISHED.value)
        .order_by(P.datatake_start, P.tile)
    ).all()
    return [
        Replacement(
            superseded_id=p.id, superseded_name=p.name, published_version=p.published_version,
            by_id=nid, by_name=nname, by_state=nstate, group=p.group,
            datatake_start=p.datatake_start, tile=p.tile,
        )
        for p, nid, nname, nstate in rows
    ]


def record_deleted_from_hub(
    session: Session,
    names: Iterable[str],
    *,
    detail: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Note products the hub no longer offers; returns the names seen deleted for the first time.

    Products we never fetched from a remote hub can no longer be fetched: they are rejected.
    Downloaded or published ones stay as they are (we have the data); ``status`` lists them all.
    """
    now = db_now(session, now)
    table = HubEvent.__table__
    ins = _upsert(session, table)
    first: list[str] = []
    for raw in names:
        name = ProductName.parse(raw).name
        got = session.execute(
            ins.values(product_name=name, kind="deleted", seen_at=now, detail=detail)
            .on_conflict_do_nothing().returning(table.c.id)
        ).first()
        if got is not None:
            first.append(name)
        _reject_unfetchable(session, name, now)
    return first


def _reject_unfetchable(session: Session, name: str, now: datetime) -> None:
    row = session.execute(select(P.id, P.state, P.hub, P.local_path, P.failed_stage).where(P.name == name)).first()
    if row is None or row.hub == "local" or row.local_path:
        return
    waiting = row.state in (State.DISCOVERED.value, State.OFFLINE.value) or (
        row.state == State.FAILED.value and row.failed_stage == State.DOWNLOADING.value
    )
    if waiting:
        transition(session, row.id, State.REJECTED, now=now, reason="deleted from the hub before download")


def requeue(
    session: Session, product_ids: int | Iterable[int], *, now: datetime | None = None, **values: Any
) -> list[int]:
    """Make products work again on an operator's request or because their file changed.

    Rejected -> discovered (the guarded ``states.TRANSITIONS`` entry: attempts and reason
    cleared, due at once; the reprocessing rule runs again for its datatake and tile); failed
    products stay failed (the stage they failed in retries them) but are due at once. Other
    states are left alone; returns the ids that changed.
    """
    ids = _ids(product_ids)
    if not ids:
        return []
    now = db_now(session, now)
    rejected = list(session.scalars(select(P.id).where(P.id.in_(ids), P.state == State.REJECTED.value)))
    moved = transition(
        session, rejected, State.DISCOVERED, now=now,
        attempts=0, reason=None, failed_stage=None, next_attempt_at=None, **values,
    ) if rejected else []
    if moved:
        keys = {(r.platform, r.datatake_start, r.tile)
                for r in session.execute(select(P.platform, P.datatake_start, P.tile).where(P.id.in_(moved)))}
        apply_supersede(session, keys=keys, now=now)
    stmt = (
        update(P)
        .where(P.id.in_(ids), P.state == State.FAILED.value)
        .values(next_attempt_at=now, updated_at=now)
        .returning(P.id)
        .execution_options(synchronize_session=False)
    )
    due = list(session.scalars(stmt))
    _expire(session, due)
    return moved + due


def retry_products(
    session: Session, names: Iterable[str] = (), *, rejected: bool = False, failed: bool = False,
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """An operator's ``s2ingest retry``: re-queue the named products and/or every rejected or
    failed one. Returns (name, state it was in) of each product re-queued; a named product that
    is neither rejected nor failed raises CatalogError naming its state."""
    wanted = {ProductName.parse(n).name for n in names}
    rows = {r.name: r for r in session.execute(select(P.id, P.name, P.state).where(P.name.in_(wanted)))} \
        if wanted else {}
    for name in sorted(wanted):
        if name not in rows:
            raise CatalogError(f"no product {name} in the catalog")
        if rows[name].state not in (State.REJECTED.value, State.FAILED.value):
            raise CatalogError(f"product {name} is {rows[name].state}, not rejected or failed: nothing to retry")
    picked = {r.id: (r.name, r.state) for r in rows.values()}
    states = [s.value for s, on in ((State.REJECTED, rejected), (State.FAILED, failed)) if on]
    if states:
        for r in session.execute(select(P.id, P.name, P.state).where(P.state.in_(states))):
            picked[r.id] = (r.name, r.state)
    moved = set(requeue(session, list(picked), now=now))
    return sorted((picked[i] for i in moved), key=lambda t: t[0])
