"""Recording commits to the store: cube versions, time steps, reference layers (DESIGN.md §5)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ingest.errors import CatalogError

from .models import Layer, Product, Publish, PublishProduct, TimeStep
from .work import db_now, mark_published


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
    nested = session.begin_nested()
    try:
        mark_published(session, ids, worker, version, now=now)
        pub = Publish(
            version=version, group_path=group, published_at=now, worker=worker,
            n_time_steps=len(steps), n_chunks_written=n_chunks_written,
            manifest_path=manifest_path, manifest=dict(manifest) if manifest is not None else None,
        )
        session.add(pub)
        session.flush()
        if ids:
            session.execute(insert(PublishProduct), [{"publish_id": pub.id, "product_id": i} for i in ids])
        _record_time_steps(session, group, version, steps, ids)
        session.flush()
    except IntegrityError as exc:
        nested.rollback()
        raise CatalogError(f"cannot record cube version {version} for {group}: {exc.orig}") from exc
    except BaseException:
        nested.rollback()
        raise
    nested.commit()
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
