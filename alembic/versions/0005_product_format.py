"""``products.format``: SAFE or EOPF (Zarr), part of a product's identity.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

The same processing of a datatake and tile can be delivered as SAFE and as EOPF Zarr: equal
platform, start, tile, baseline and generation time. Both are recorded (as ``X`` and ``X.zarr``)
and the reprocessing rule keeps one (SAFE on a tie, ``ingest.products.names.FORMAT_PREFERENCE``),
so the identity constraint includes the format. Existing rows are SAFE products.
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_IDENTITY = ["platform", "datatake_start", "tile", "baseline", "generation_time"]


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.add_column(sa.Column("format", sa.String(length=8), nullable=False, server_default="SAFE"))
        batch.drop_constraint(op.f("uq_products_identity"), type_="unique")
        batch.create_unique_constraint(op.f("uq_products_identity"), [*_IDENTITY, "format"])
    op.execute("UPDATE products SET format = 'EOPF' WHERE name LIKE '%.zarr'")


def downgrade() -> None:
    # the older schema knows no EOPF products: forget them (they are found again by a search)
    op.execute("DELETE FROM publish_products WHERE product_id IN (SELECT id FROM products WHERE format = 'EOPF')")
    op.execute("UPDATE products SET superseded_by = NULL WHERE superseded_by IN "
               "(SELECT id FROM products WHERE format = 'EOPF')")
    op.execute("DELETE FROM products WHERE format = 'EOPF'")
    with op.batch_alter_table("products") as batch:
        batch.drop_constraint(op.f("uq_products_identity"), type_="unique")
        batch.create_unique_constraint(op.f("uq_products_identity"), _IDENTITY)
        batch.drop_column("format")
