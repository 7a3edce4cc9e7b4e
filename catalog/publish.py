"""Recording commits to the store: cube versions, time steps, reference layers (DESIGN.md §5)."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import case, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingest.errors import CatalogError

from .models import Layer, Product, Publish, PublishProduct, TimeStep
from .states import REPAIRS, State
from .work import _expire, db_now, mark_published


@contextmanager
def _all_or_nothing(session: Session, what: str) -> Iterator[None]:
    """A savepoint: everything in the block is recorded, or nothing and the caller's
    transaction stays usable; a constraint violation becomes one CatalogError saying ``what``."""
    nested = session.begin_nested()
    try:
        yield
    except IntegrityError as exc:
        nested.rollback()
        raise CatalogError(f"{what}: {exc.orig}") from exc
    except BaseException:
        nested.rollback()
        raise
    nested.commit()


@dataclass(frozen=True)
class TimeStepRecord:
    """One time step a publish wrote (one datatake of one group)."""

    time: datetime  # the time coordinate: the datatake sensing start (DESIGN.md §4)
    platform: str
    datatake_id: str | None = None


def next_version(session: Session) -> int:
    """The cube version the next publish should take (one counter for the whole cube)."""
    return (session.scalar(select(func.max(Publish.version))) or 0) + 1


def record_publish(
    session: Session,
    *,
    group: str,
    version: int,
    product_ids: Iterable[int],
    worker: str,
    n_chunks_written: int,
    time_steps: Iterable[TimeStepRecord] = (),
    manifest_path: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Publish:
    """The catalog side of a commit, all or nothing: products published (lease-checked), the
    publish row with its manifest, and the time steps it wrote.

    Raises LeaseLostError if any lease was taken over, CatalogError if ``version`` is taken;
    in both cases nothing is recorded (a savepoint), and the caller's transaction stays usable.
    """
    now = db_now(session, now)
    ids = list(dict.fromkeys(product_ids))
    steps = list(time_steps)
    with _all_or_nothing(session, f"cannot record cube version {version} for {group}"):
        mark_published(session, ids, worker, version, now=now)
        pub = Publish(
            version=version, group_path=group, published_at=now, created_at=now, worker=worker,
            n_time_steps=len(steps), n_chunks_written=n_chunks_written,
            manifest_path=manifest_path, manifest=dict(manifest) if manifest is not None else None,
        )
        session.add(pub)
        session.flush()
        if ids:
            session.execute(insert(PublishProduct), [{"publish_id": pub.id, "product_id": i} for i in ids])
        _record_time_steps(session, group, version, steps, ids)
        session.flush()
    return pub


def _record_time_steps(
    session: Session, group: str, version: int, steps: list[TimeStepRecord], product_ids: list[int]
) -> None:
    by_time: dict[datetime, TimeStep] = {}
    for rec in steps:
        step = session.scalar(select(TimeStep).where(TimeStep.group_path == group, TimeStep.time == rec.time))
        if step is None:
            step = TimeStep(group_path=group, time=rec.time, platform=rec.platform,
                            datatake_id=rec.datatake_id, published_version=version)
            session.add(step)
        else:
            step.platform, step.published_version = rec.platform, version
            step.datatake_id = rec.datatake_id or step.datatake_id
        by_time[rec.time] = step
    session.flush()
    if not product_ids or not by_time:
        return
    for p in session.scalars(select(Product).where(Product.id.in_(product_ids))):
        step = by_time.get(p.datatake_start)
        if step is not None and p.group == group:
            p.time_step_id = step.id


def record_layer(
    session: Session,
    *,
    group: str,
    name: str,
    edition: str,
    source_name: str,
    sha256: str,
    version: int,
    attribute: str | None = None,
    now: datetime | None = None,
) -> Layer:
    """Record (or update) one edition of a reference layer written into ``group``."""
    now = db_now(session, now)
    layer = session.scalar(select(Layer).where(
        Layer.group_path == group, Layer.name == name, Layer.edition == edition
    ))
    if layer is None:
        layer = Layer(group_path=group, name=name, edition=edition)
        session.add(layer)
    layer.source_name, layer.sha256, layer.attribute = source_name, sha256, attribute
    layer.version, layer.added_at = version, now
    session.flush()
    return layer


# --------------------------------------------------------------------------- version summaries

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _normalize_changes(
    changes: Mapping[str, Mapping[str, Any] | None] | Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]] | None:
    """``[{"key", "size", "sha256"}]`` sorted by key (size/sha256 None: the key was removed).

    Accepts the writer's change list (key -> {"size", "sha256"} or None) or that list form.
    """
    if changes is None:
        return None
    if isinstance(changes, Mapping):
        items = [(k, v) for k, v in changes.items()]
    else:
        items = []
        for entry in changes:
            if not isinstance(entry, Mapping) or "key" not in entry:
                raise CatalogError(f"a change needs a key: {entry!r}")
            gone = entry.get("size") is None and entry.get("sha256") is None
            items.append((entry["key"], None if gone else entry))
    out: dict[str, dict[str, Any]] = {}
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise CatalogError(f"a changed key must be a non-empty string, not {key!r}")
        if key in out:
            raise CatalogError(f"changed key {key} listed twice")
        if value is None:
            out[key] = {"key": key, "size": None, "sha256": None}
            continue
        size, sha = value.get("size"), value.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CatalogError(f"changed key {key}: size must be an int >= 0, not {size!r}")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise CatalogError(f"changed key {key}: sha256 must be 64 lowercase hex digits, not {sha!r}")
        out[key] = {"key": key, "size": size, "sha256": sha}
    return [out[k] for k in sorted(out)]


def record_version(
    session: Session,
    version: int,
    parent: int | None,
    manifest_sha256: str,
    n_keys: int,
    changes: Mapping[str, Mapping[str, Any] | None] | Sequence[Mapping[str, Any]] | None,
    group: str,
    *,
    worker: str | None = None,
    now: datetime | None = None,
) -> Publish:
    """Record the manifest summary of cube ``version``; idempotent by version.

    Fills the summary of the version's ``publishes`` row (written by ``record_publish`` or
    ``reconcile_published``: call this after them, in the same transaction), or creates the
    row when the catalog has none for that version. ``parent``: the version it was built on
    (None for the first); ``changes``: the writer's change list, key -> {"size", "sha256"} or
    None for a removed key (None: unknown). Recording the same summary again changes
    nothing; a different summary for a recorded version raises ``CatalogError``.

    DESIGN CHOICE: a version's manifest is immutable (mirrors verify keys by its hashes), so a
    second, different summary is a bug or two writers sharing a number, never an update.
    """
    if not isinstance(version, int) or version < 1:
        raise CatalogError(f"cube version must be an int >= 1, not {version!r}")
    if parent is not None and (not isinstance(parent, int) or not 0 <= parent < version):
        raise CatalogError(f"parent of cube version {version} must be an earlier version, not {parent!r}")
    if not isinstance(manifest_sha256, str) or not _SHA256.match(manifest_sha256):
        raise CatalogError(f"manifest_sha256 must be 64 lowercase hex digits, not {manifest_sha256!r}")
    if not isinstance(n_keys, int) or n_keys < 0:
        raise CatalogError(f"n_keys must be an int >= 0, not {n_keys!r}")
    summary = {"parent_version": parent, "manifest_sha256": manifest_sha256, "n_keys": n_keys,
               "changes": _normalize_changes(changes)}
    now = db_now(session, now)
    pub = session.scalar(select(Publish).where(Publish.version == version))
    if pub is None:
        written = sum(1 for c in summary["changes"] or () if c["size"] is not None)
        nested = session.begin_nested()
        try:
            pub = Publish(version=version, group_path=group, published_at=now, created_at=now, worker=worker,
                          n_time_steps=0, n_chunks_written=written, **summary)
            session.add(pub)
            session.flush()
        except IntegrityError:
            nested.rollback()  # another process recorded this version meanwhile: compare below
            pub = None
        else:
            nested.commit()
            return pub
    else:
        # Guarded: only a row without a summary is filled, so two recorders cannot both write.
        session.execute(
            update(Publish)
            .where(Publish.version == version, Publish.group_path == group, Publish.manifest_sha256.is_(None))
            .values(**summary)
            .execution_options(synchronize_session=False)
        )
    pub = session.scalar(
        select(Publish).where(Publish.version == version).execution_options(populate_existing=True)
    )
    if pub is None:  # pragma: no cover - deleted under our feet
        raise CatalogError(f"cube version {version} vanished while recording its summary")
    if pub.group_path != group:
        raise CatalogError(f"cube version {version} belongs to {pub.group_path}, not {group}")
    recorded = {k: getattr(pub, k) for k in summary}
    if recorded != summary:
        diff = ", ".join(f"{k} {recorded[k]!r:.40} != {summary[k]!r:.40}" for k in summary if recorded[k] != summary[k])
        raise CatalogError(f"cube version {version} of {group} is recorded with another manifest summary ({diff}); "
                           "a version's manifest never changes")
    return pub


# --------------------------------------------------------------------------- reconcile

_S2_GROUP = re.compile(r"^/S2/R(\d{3})$")


@dataclass(frozen=True)
class ReconcileReport:
    """What ``reconcile_published`` changed (all empty/False: the catalog already agreed)."""

    group: str
    version: int
    time_steps_added: tuple[datetime, ...] = ()
    time_steps_removed: tuple[datetime, ...] = ()
    time_steps_updated: tuple[datetime, ...] = ()
    published: tuple[str, ...] = ()  # products now published (the store holds them)
    unpublished: tuple[str, ...] = ()  # products back to downloaded/discovered (the store does not)
    stamped: tuple[str, ...] = ()  # superseded products the store still holds: published_version set
    relinked: int = 0  # products whose time step link was corrected
    publish_created: bool = False  # the publishes row of ``version`` was missing
    unknown: tuple[str, ...] = ()  # in the store, not in the catalog (for this group)
    conflicts: tuple[str, ...] = ()  # in the store but rejected in the catalog: left alone, look at them

    @property
    def changed(self) -> bool:
        return bool(self.time_steps_added or self.time_steps_removed or self.time_steps_updated
                    or self.published or self.unpublished or self.stamped or self.relinked
                    or self.publish_created)


def _store_axis(time_steps: Iterable[TimeStepRecord]) -> dict[datetime, TimeStepRecord]:
    axis: dict[datetime, TimeStepRecord] = {}
    for rec in time_steps:
        if rec.time.tzinfo is None or rec.time.utcoffset() is None:
            raise CatalogError(f"time step {rec.time!r} is naive: the store's times are UTC")
        if rec.time in axis:
            raise CatalogError(f"the store's time axis lists {rec.time.isoformat()} twice")
        # DESIGN CHOICE: the store writes "" for a datatake id it does not know; the catalog NULL.
        axis[rec.time] = TimeStepRecord(rec.time, rec.platform, rec.datatake_id or None)
    return axis


def _reconcile_time_steps(
    session: Session, group: str, version: int, axis: dict[datetime, TimeStepRecord]
) -> tuple[list[datetime], list[datetime], list[datetime], dict[datetime, int]]:
    """The group's time_steps rows := the store's axis. Returns added, removed, updated, time -> id."""
    existing = {row.time: row for row in session.scalars(select(TimeStep).where(TimeStep.group_path == group))}
    removed = sorted(t for t in existing if t not in axis)
    if removed:
        ids = [existing[t].id for t in removed]
        session.execute(update(Product).where(Product.time_step_id.in_(ids)).values(time_step_id=None)
                        .execution_options(synchronize_session=False))
        session.execute(delete(TimeStep).where(TimeStep.id.in_(ids), TimeStep.group_path == group)
                        .execution_options(synchronize_session=False))
        for t in removed:
            session.expunge(existing.pop(t))
    added, updated = [], []
    for t, rec in sorted(axis.items()):
        row = existing.get(t)
        if row is None:
            # DESIGN CHOICE: which version first wrote a step the catalog never heard of is
            # unknown; the store's version is the one that is known to contain it.
            row = TimeStep(group_path=group, time=t, platform=rec.platform, datatake_id=rec.datatake_id,
                           published_version=version)
            session.add(row)
            existing[t] = row
            added.append(t)
        elif (row.platform, row.datatake_id) != (rec.platform, rec.datatake_id):
            row.platform, row.datatake_id, row.published_version = rec.platform, rec.datatake_id, version
            updated.append(t)
    session.flush()
    return added, removed, updated, {t: row.id for t, row in existing.items()}


def reconcile_published(
    session: Session,
    *,
    group: str,
    version: int,
    time_steps: list[TimeStepRecord],
    products_in_store: set[str],
    worker: str | None,
    now: datetime | None = None,
) -> ReconcileReport:
    """Make the catalog agree with the store's published view of ``group``, e.g. after a crash
    between the store commit and the catalog commit. The store is the truth.

    ``version``: the group's cube version in the store (0: never published); ``time_steps``:
    its time axis; ``products_in_store``: the product names its ``products`` coordinate lists.
    ``worker`` is recorded as who repaired. All or nothing (a savepoint in the caller's
    transaction); idempotent: a second call changes nothing. Run it under the store lock, so
    no publish of the same group runs meanwhile.
    """
    if not isinstance(version, int) or version < 0:
        raise CatalogError(f"store version must be an int >= 0, not {version!r}")
    if not group.startswith("/"):
        raise CatalogError(f"group must be a path like /S2/R051, not {group!r}")
    axis = _store_axis(time_steps)
    if version == 0 and (axis or products_in_store):
        raise CatalogError(f"{group}: a store at version 0 has published nothing, yet lists "
                           f"{len(axis)} time steps and {len(products_in_store)} products")
    names = set(products_in_store)
    now = db_now(session, now)
    who = worker or "an unnamed worker"
    with _all_or_nothing(session, f"cannot reconcile {group} with store version {version}"):
        report = _reconcile(session, group, version, axis, names, worker, who, now)
        session.flush()
    return report


def _reconcile(
    session: Session, group: str, version: int, axis: dict[datetime, TimeStepRecord],
    names: set[str], worker: str | None, who: str, now: datetime,
) -> ReconcileReport:
    added, removed, updated, step_ids = _reconcile_time_steps(session, group, version, axis)

    # DESIGN CHOICE: products belong to a group through their relative orbit (/S2/R051 <->
    # orbit 51); other groups (reference layers, /NL...) hold no products, only time steps.
    m = _S2_GROUP.match(group)
    rows = [] if m is None else session.execute(
        select(Product.id, Product.name, Product.state, Product.published_version, Product.datatake_start,
               Product.time_step_id)
        .where(Product.relative_orbit == int(m.group(1)))
    ).all()
    by_name = {r.name: r for r in rows}
    unknown = sorted(names - by_name.keys())
    conflicts = sorted(r.name for r in rows if r.name in names and r.state == State.REJECTED.value)

    # DESIGN CHOICE: the store holds it, so its work is done: any non-terminal state becomes
    # published, whatever lease it holds (a crashed worker's, or a live one's, which then
    # finds out through LeaseLostError and publishes nothing). Stamped with the store's
    # version, the known version that contains it; the reason records who repaired it.
    to_publish = [r.id for r in rows if r.name in names and r.state in REPAIRS[State.PUBLISHED.value]]
    published_ids = list(session.scalars(
        update(Product)
        .where(Product.id.in_(to_publish), Product.state.in_(sorted(REPAIRS[State.PUBLISHED.value])))
        .values(state=State.PUBLISHED.value, published_version=version, published_at=now,
                lease_owner=None, lease_expires_at=None, next_attempt_at=None, failed_stage=None,
                reason=f"published: found in the store at version {version} by {who} (reconcile)",
                updated_at=now)
        .returning(Product.id)
        .execution_options(synchronize_session=False)
    )) if to_publish else []

    # DESIGN CHOICE: a superseded product the store still holds stays superseded (its
    # replacement is on its way) but gets the published_version it lacks, so
    # pending_replacements sees that its data must be replaced.
    to_stamp = [r.id for r in rows if r.name in names and r.state == State.SUPERSEDED.value
                and r.published_version is None]
    stamped_ids = list(session.scalars(
        update(Product)
        .where(Product.id.in_(to_stamp), Product.state == State.SUPERSEDED.value,
               Product.published_version.is_(None))
        .values(published_version=version, published_at=now, updated_at=now)
        .returning(Product.id)
        .execution_options(synchronize_session=False)
    )) if to_stamp else []

    # DESIGN CHOICE: published in the catalog but not in the store: the store is the truth,
    # the product goes back to be ingested again (downloaded; discovered when no local copy
    # was ever recorded, so it is fetched first). Superseded products are not touched: their
    # data leaving the store is the normal end of a replacement.
    to_unpublish = [r.id for r in rows if r.state == State.PUBLISHED.value and r.name not in names]
    back = case((Product.local_path.is_(None), literal(State.DISCOVERED.value)), else_=literal(State.DOWNLOADED.value))
    unpublished_ids = list(session.scalars(
        update(Product)
        .where(Product.id.in_(to_unpublish), Product.state == State.PUBLISHED.value)
        .values(state=back, published_version=None, published_at=None, time_step_id=None,
                next_attempt_at=None,
                reason=f"not in the store at version {version} (found by {who}, reconcile): ingest again",
                updated_at=now)
        .returning(Product.id)
        .execution_options(synchronize_session=False)
    )) if to_unpublish else []

    # Every product the store holds points at its time step (None when the axis lacks its time).
    relinked = 0
    for r in rows:
        if r.name not in names or r.id in unpublished_ids or r.state == State.REJECTED.value:
            continue
        want = step_ids.get(r.datatake_start)
        if r.time_step_id != want:
            relinked += session.execute(
                update(Product).where(Product.id == r.id).values(time_step_id=want)
                .execution_options(synchronize_session=False)
            ).rowcount
    _expire(session, [r.id for r in rows])

    # DESIGN CHOICE: the store's version must have its publishes row (next_version, status and
    # the version history read it); a missing one is created, flagged reconciled, with what the
    # store tells (time steps); what it does not tell (chunks written, manifest) stays 0/NULL.
    publish_created = False
    if version > 0:
        pub = session.scalar(select(Publish).where(Publish.version == version))
        if pub is None:
            pub = Publish(version=version, group_path=group, published_at=now, created_at=now, worker=worker,
                          n_time_steps=len(axis), n_chunks_written=0, reconciled=True)
            session.add(pub)
            session.flush()
            publish_created = True
        elif pub.group_path != group:
            raise CatalogError(f"the store's {group} is at cube version {version}, which the catalog "
                               f"records for {pub.group_path}: catalog and store are of different cubes?")
        if published_ids:
            linked = set(session.scalars(select(PublishProduct.product_id).where(
                PublishProduct.publish_id == pub.id, PublishProduct.product_id.in_(published_ids))))
            new = [{"publish_id": pub.id, "product_id": i} for i in published_ids if i not in linked]
            if new:
                session.execute(insert(PublishProduct), new)

    name_of = {r.id: r.name for r in rows}
    return ReconcileReport(
        group=group, version=version,
        time_steps_added=tuple(added), time_steps_removed=tuple(removed), time_steps_updated=tuple(updated),
        published=tuple(sorted(name_of[i] for i in published_ids)),
        unpublished=tuple(sorted(name_of[i] for i in unpublished_ids)),
        stamped=tuple(sorted(name_of[i] for i in stamped_ids)),
        relinked=relinked, publish_created=publish_created,
        unknown=tuple(unknown), conflicts=tuple(conflicts),
    )
