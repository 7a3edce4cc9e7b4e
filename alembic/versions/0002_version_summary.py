"""Cube versions carry their manifest summary; publishes written by reconciliation are flagged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Adds to ``publishes`` (the cube-version table): ``parent_version``, ``manifest_sha256``,
``n_keys``, ``changes`` (JSON), ``created_at`` and ``reconciled``. Existing rows are kept:
``created_at`` takes their ``published_at``, ``reconciled`` false, the summary stays NULL
(unknown for versions recorded before this migration). Self-contained, like 0001.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # DESIGN CHOICE: NOT NULL columns arrive with a server default that fills the existing rows
    # and is dropped again, so the schema equals the models (which set them from Python).
    with op.batch_alter_table("publishes") as batch:
        batch.add_column(sa.Column("parent_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("manifest_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("n_keys", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("changes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("reconciled", sa.Boolean(), nullable=False, server_default=sa.false()))
    publishes = sa.table("publishes", sa.column("created_at"), sa.column("published_at"))
    op.execute(publishes.update().values(created_at=publishes.c.published_at))
    with op.batch_alter_table("publishes") as batch:
        batch.alter_column("created_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.alter_column("reconciled", existing_type=sa.Boolean(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("publishes") as batch:
        batch.drop_column("reconciled")
        batch.drop_column("created_at")
        batch.drop_column("changes")
        batch.drop_column("n_keys")
        batch.drop_column("manifest_sha256")
        batch.drop_column("parent_version")
