"""project limits set by an admin become ceilings; owners get their own defaults beside them

The existing `rate_limit`, `burst` and `quota` columns keep the admin's values (whoever set
them before, they now bind owners until an admin changes them); `owner_*` hold what an owner
sets, which may only be tighter.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("owner_rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("owner_burst", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("owner_quota", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    # SQLite rebuilds the table to drop columns: keep ids never reused (0004)
    with op.batch_alter_table("projects", table_kwargs={"sqlite_autoincrement": True}) as batch:
        for col in ("owner_quota", "owner_burst", "owner_rate_limit"):
            batch.drop_column(col)
