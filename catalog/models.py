"""SQLAlchemy 2.x models of the catalog (DESIGN.md §6).

The migrations in ``alembic/versions`` create exactly this schema; ``tests/test_catalog_migrations.py``
compares the two with alembic's autogenerate on SQLite and PostgreSQL.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .states import ALL_STATES, State

HUBS: tuple[str, ...] = ("local", "dhus", "cdse")

# Deterministic constraint names, so migrations can refer to them on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    DESIGN CHOICE: PostgreSQL stores ``timestamptz``; SQLite has no time zones, so we store naive
    UTC text there and attach UTC on the way out. Naive inputs are refused: a naive datetime in
    this code base is a bug (product times are UTC by definition), and guessing would hide it.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the catalog stores UTC, give a tz-aware value")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Product(Base):
    """One L2A tile product and where it is in the pipeline."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)  # without .SAFE / .zip (EOPF: ".zarr")
    # identity (DESIGN.md §7): datatake (platform + sensing start), tile, baseline, generation time
    platform: Mapped[str] = mapped_column(String(3))
    datatake_start: Mapped[datetime]
    datatake_id: Mapped[Optional[str]] = mapped_column(String(64))  # known after reading metadata
    tile: Mapped[str] = mapped_column(String(5))
    relative_orbit: Mapped[int] = mapped_column(Integer)
    baseline: Mapped[str] = mapped_column(String(5))  # "05.09": zero-padded, so text order = version order
    generation_time: Mapped[datetime]
    # "SAFE" or "EOPF" (a ".zarr" name, ingest.products.names): part of the identity, so the same
    # processing in both formats is two products, of which the reprocessing rule keeps one
    format: Mapped[str] = mapped_column(String(8), default="SAFE", server_default="SAFE")
    # where it comes from
    hub: Mapped[str] = mapped_column(String(8), default="local")
    hub_id: Mapped[Optional[str]] = mapped_column(Text)  # a local source: the full path
    hub_checksum_algorithm: Mapped[Optional[str]] = mapped_column(String(16))
    hub_checksum_value: Mapped[Optional[str]] = mapped_column(String(128))
    size_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    cloud_cover: Mapped[Optional[float]] = mapped_column(Float)
    online: Mapped[Optional[bool]] = mapped_column(Boolean)
    local_path: Mapped[Optional[str]] = mapped_column(Text)
    # pipeline state
    state: Mapped[str] = mapped_column(String(16), default=State.DISCOVERED.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Optional[datetime]]
    failed_stage: Mapped[Optional[str]] = mapped_column(String(16))  # the leased state a failure came from
    reason: Mapped[Optional[str]] = mapped_column(Text)  # last failure / rejection / supersede note
    superseded_by: Mapped[Optional[int]] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    lease_owner: Mapped[Optional[str]] = mapped_column(String(128))
    lease_expires_at: Mapped[Optional[datetime]]
    # publish info. DESIGN CHOICE: no time index here: a late datatake inserted before it would
    # shift it; the time step row (group, time) is stable.
    published_version: Mapped[Optional[int]] = mapped_column(Integer)
    published_at: Mapped[Optional[datetime]]
    time_step_id: Mapped[Optional[int]] = mapped_column(ForeignKey("time_steps.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    superseder: Mapped[Optional["Product"]] = relationship(remote_side=[id], foreign_keys=[superseded_by])
    time_step: Mapped[Optional["TimeStep"]] = relationship(foreign_keys=[time_step_id])

    __table_args__ = (
        UniqueConstraint(
            "platform", "datatake_start", "tile", "baseline", "generation_time", "format",
            name="uq_products_identity",
        ),
        CheckConstraint(f"state IN ({_in(ALL_STATES)})", name="state"),
        CheckConstraint(f"hub IN ({_in(HUBS)})", name="hub"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # claim(): due work of one stage, optionally one orbit
        Index(None, "state", "next_attempt_at"),
        Index(None, "relative_orbit", "state"),
        # reclaim of lapsed leases
        Index(None, "state", "lease_expires_at"),
        Index(None, "superseded_by"),
    )

    @property
    def group(self) -> str:
        """The cube group this product belongs to (DESIGN.md §3)."""
        return f"/S2/R{self.relative_orbit:03d}"

    def __repr__(self) -> str:
        return f"<Product {self.id} {self.name} {self.state}>"


class PublishProduct(Base):
    """Which products one publish committed."""

    __tablename__ = "publish_products"

    publish_id: Mapped[int] = mapped_column(ForeignKey("publishes.id", ondelete="CASCADE"), primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), primary_key=True)
    __table_args__ = (Index(None, "product_id"),)


class Publish(Base):
    """One commit to the store: a cube version with its manifest (DESIGN.md §5)."""

    __tablename__ = "publishes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # DESIGN CHOICE: one version counter for the whole cube (not per group), unique, so two
    # publishers racing for the same number collide in the database instead of in the mirrors.
    version: Mapped[int] = mapped_column(Integer, unique=True)
    group_path: Mapped[str] = mapped_column(String(32))  # "/S2/R051", "/NL/BRP"
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    worker: Mapped[Optional[str]] = mapped_column(String(128))
    n_time_steps: Mapped[int] = mapped_column(Integer, default=0)
    n_chunks_written: Mapped[int] = mapped_column(Integer, default=0)
    manifest_path: Mapped[Optional[str]] = mapped_column(Text)
    manifest: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # The version's manifest summary (migration 0002; record_version). NULL until recorded.
    parent_version: Mapped[Optional[int]] = mapped_column(Integer)  # the version it was built on
    manifest_sha256: Mapped[Optional[str]] = mapped_column(String(64))
    n_keys: Mapped[Optional[int]] = mapped_column(Integer)  # keys the manifest lists
    # [{"key", "size", "sha256"}] sorted by key; size/sha256 null: the key is no longer stored
    changes: Mapped[Optional[list[dict[str, Any]]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)  # when this row was written
    # True: written by reconcile_published after a crash, not by the publish that made it.
    reconciled: Mapped[bool] = mapped_column(Boolean, default=False)

    products: Mapped[list[Product]] = relationship(secondary="publish_products", viewonly=True)
    __table_args__ = (Index(None, "group_path", "version"),)


class TimeStep(Base):
    """One published time step (one datatake) of a group (DESIGN.md §4)."""

    __tablename__ = "time_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_path: Mapped[str] = mapped_column(String(32))
    time: Mapped[datetime]
    platform: Mapped[str] = mapped_column(String(3))
    datatake_id: Mapped[Optional[str]] = mapped_column(String(64))
    published_version: Mapped[int] = mapped_column(Integer)  # the last version that wrote it
    __table_args__ = (UniqueConstraint("group_path", "time"),)


class Layer(Base):
    """One edition of a reference layer rasterised into a group (``/NL/BRP`` ...)."""

    __tablename__ = "layers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_path: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    edition: Mapped[str] = mapped_column(String(32))  # "2023", "2024-v2"
    source_name: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    attribute: Mapped[Optional[str]] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("group_path", "name", "edition"),)


class HubEvent(Base):
    """Something a hub told us about a product outside a search result (deleted, ...)."""

    __tablename__ = "hub_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # "deleted"
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[Optional[str]] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("product_name", "kind"),)


class StoreLease(Base):
    """The writer lease of one store for writers on several machines (``catalog.locks``).

    ``token`` grows by one with every acquisition and is never reused: a writer's commit is
    accepted only while the row still carries the token it acquired (fencing).
    """

    __tablename__ = "store_leases"

    store_id: Mapped[str] = mapped_column(String(1024), primary_key=True)
    holder: Mapped[Optional[str]] = mapped_column(String(255))  # host:pid; NULL when released
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()


class StoreIdentity(Base):
    """The store this catalog describes (at most one row): the random identity the store
    records in ``.s2ingest/id.json``. A store and a catalog that name different identities
    are never used together (``catalog.identity``)."""

    __tablename__ = "store_identity"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    location: Mapped[Optional[str]] = mapped_column(Text)  # where the store was when recorded
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
