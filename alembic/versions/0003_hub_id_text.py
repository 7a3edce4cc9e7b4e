"""``products.hub_id`` holds any length: a local source's id is the product's full path.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Found by a sync from a deep folder on PostgreSQL: ``VARCHAR(128)`` refused the path (SQLite
never enforces lengths, so it went unnoticed). Existing values are kept.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.alter_column("hub_id", existing_type=sa.String(length=128), type_=sa.Text(),
                           existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.alter_column("hub_id", existing_type=sa.Text(), type_=sa.String(length=128),
                           existing_nullable=True)
