"""Initial catalog schema: products, publishes, time steps, reference layers, hub events.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Self-contained on purpose (no import of catalog.models): a migration must keep creating the
schema of its day however the models change later.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

STATES = ("discovered", "downloading", "downloaded", "ingesting", "published",
          "failed", "rejected", "superseded", "offline")
HUBS = ("local", "dhus", "cdse")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    op.create_table(
        "hub_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("seen_at", _utc(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_events")),
        sa.UniqueConstraint("product_name", "kind", name=op.f("uq_hub_events_product_name_kind")),
    )
    op.create_table(
        "layers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_path", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("edition", sa.String(length=32), nullable=False),
        sa.Column("source_name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("attribute", sa.String(length=64), nullable=True),
        sa.Column("added_at", _utc(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layers")),
        sa.UniqueConstraint("group_path", "name", "edition", name=op.f("uq_layers_group_path_name_edition")),
    )
    op.create_table(
        "publishes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("group_path", sa.String(length=32), nullable=False),
        sa.Column("published_at", _utc(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("n_time_steps", sa.Integer(), nullable=False),
        sa.Column("n_chunks_written", sa.Integer(), nullable=False),
        sa.Column("manifest_path", sa.Text(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publishes")),
        sa.UniqueConstraint("version", name=op.f("uq_publishes_version")),
    )
    op.create_index(op.f("ix_publishes_group_path_version"), "publishes", ["group_path", "version"])
    op.create_table(
        "time_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_path", sa.String(length=32), nullable=False),
        sa.Column("time", _utc(), nullable=False),
        sa.Column("platform", sa.String(length=3), nullable=False),
        sa.Column("datatake_id", sa.String(length=64), nullable=True),
        sa.Column("published_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_time_steps")),
        sa.UniqueConstraint("group_path", "time", name=op.f("uq_time_steps_group_path_time")),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("platform", sa.String(length=3), nullable=False),
        sa.Column("datatake_start", _utc(), nullable=False),
        sa.Column("datatake_id", sa.String(length=64), nullable=True),
        sa.Column("tile", sa.String(length=5), nullable=False),
        sa.Column("relative_orbit", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.String(length=5), nullable=False),
        sa.Column("generation_time", _utc(), nullable=False),
        sa.Column("hub", sa.String(length=8), nullable=False),
        sa.Column("hub_id", sa.String(length=128), nullable=True),
        sa.Column("hub_checksum_algorithm", sa.String(length=16), nullable=True),
        sa.Column("hub_checksum_value", sa.String(length=128), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cloud_cover", sa.Float(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=True),
        sa.Column("local_path", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _utc(), nullable=True),
        sa.Column("failed_stage", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", _utc(), nullable=True),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.Column("published_at", _utc(), nullable=True),
        sa.Column("time_step_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.CheckConstraint(f"state IN ({_in(STATES)})", name=op.f("ck_products_state")),
        sa.CheckConstraint(f"hub IN ({_in(HUBS)})", name=op.f("ck_products_hub")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_products_attempts")),
        sa.ForeignKeyConstraint(["superseded_by"], ["products.id"],
                                name=op.f("fk_products_superseded_by_products"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["time_step_id"], ["time_steps.id"],
                                name=op.f("fk_products_time_step_id_time_steps"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        sa.UniqueConstraint("name", name=op.f("uq_products_name")),
        sa.UniqueConstraint("platform", "datatake_start", "tile", "baseline", "generation_time",
                            name=op.f("uq_products_identity")),
    )
    op.create_index(op.f("ix_products_relative_orbit_state"), "products", ["relative_orbit", "state"])
    op.create_index(op.f("ix_products_state_lease_expires_at"), "products", ["state", "lease_expires_at"])
    op.create_index(op.f("ix_products_state_next_attempt_at"), "products", ["state", "next_attempt_at"])
    op.create_index(op.f("ix_products_superseded_by"), "products", ["superseded_by"])
    op.create_table(
        "publish_products",
        sa.Column("publish_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"],
                                name=op.f("fk_publish_products_product_id_products"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["publish_id"], ["publishes.id"],
                                name=op.f("fk_publish_products_publish_id_publishes"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("publish_id", "product_id", name=op.f("pk_publish_products")),
    )
    op.create_index(op.f("ix_publish_products_product_id"), "publish_products", ["product_id"])


def downgrade() -> None:
    op.drop_table("publish_products")
    op.drop_table("products")
    op.drop_table("time_steps")
    op.drop_table("publishes")
    op.drop_table("layers")
    op.drop_table("hub_events")
