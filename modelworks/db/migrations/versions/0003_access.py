"""access control: key model allowlists, rate limits and quotas (per key and project
default), hourly usage records

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("burst", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("burst", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("compute_ms", sa.Float(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint(
            "project_id",
            "key_id",
            "model",
            "version",
            "hour",
            name=op.f("uq_usage_records_project_id"),
        ),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.create_index(batch.f("ix_usage_records_project_id"), ["project_id"], unique=False)
        batch.create_index(batch.f("ix_usage_records_key_id"), ["key_id"], unique=False)
        batch.create_index(batch.f("ix_usage_records_hour"), ["hour"], unique=False)


def downgrade() -> None:
    op.drop_table("usage_records")
    with op.batch_alter_table("api_keys") as batch:
        for col in ("quota", "burst", "rate_limit", "models"):
            batch.drop_column(col)
    with op.batch_alter_table("projects") as batch:
        for col in ("quota", "burst", "rate_limit"):
            batch.drop_column(col)
