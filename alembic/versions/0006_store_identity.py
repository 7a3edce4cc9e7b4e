"""``store_identity``: the identity of the store a catalog describes (one row).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

A store records a random identity in ``.s2ingest/id.json`` (written by its first commit; a
store from before identities gets one with its next commit); the catalog records the identity
of its store the first time both are used together. Commands that open both refuse a pair
whose identities differ. Existing catalogs start with no row (they adopt their store's).
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "store_identity",
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_store_identity")),
    )


def downgrade() -> None:
    op.drop_table("store_identity")
