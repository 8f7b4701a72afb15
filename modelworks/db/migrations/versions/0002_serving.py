"""serving options per model; derived artifacts and status per version

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("serving", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("artifacts", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="ready")
        )
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("status_reason")
        batch.drop_column("status")
        batch.drop_column("artifacts")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("serving")
