"""the job queue: jobs and their events, in the registry database

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("phase", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_jobs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_jobs_project_id"), "jobs", ["project_id"])
    op.create_index(op.f("ix_jobs_status"), "jobs", ["status"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"])
    _queue_interrupted_exports()


def _queue_interrupted_exports() -> None:
    """Versions left `converting` by the old in-process exporter get an export job, which the
    old server would have resumed by scanning versions at start."""
    import time
    from datetime import UTC, datetime

    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT v.id, v.version, v.digest, v.signature, m.name, m.task, m.project_id "
            "FROM model_versions v JOIN models m ON m.id = v.model_id "
            "WHERE v.status = 'converting'"
        )
    ).fetchall()
    jobs = sa.table(
        "jobs",
        *(sa.column(c) for c in ("project_id", "kind", "status", "error", "attempts")),
        sa.column("params", sa.JSON()),
        sa.column("result", sa.JSON()),
        *(sa.column(c) for c in ("max_attempts", "run_after", "worker", "lease_until")),
        *(sa.column(c) for c in ("cancel_requested", "progress", "phase", "created_by")),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    for vid, number, digest, signature, name, task, project_id in rows:
        sig = signature if isinstance(signature, dict) else json.loads(signature or "{}")
        params = {
            "version_id": vid,
            "model": name,
            "version": number,
            "source_digest": digest,
            "task": task,
            "root": str(sig.get("root") or ""),
        }
        conn.execute(
            jobs.insert().values(
                project_id=project_id,
                kind="export",
                status="queued",
                params=params,
                result={},
                error="",
                attempts=0,
                max_attempts=3,
                run_after=time.time(),
                worker="",
                lease_until=0.0,
                cancel_requested=False,
                progress=0.0,
                phase="",
                created_by="migration 0006",
                created_at=datetime.now(UTC),
            )
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_job_events_job_id"), table_name="job_events")
    op.drop_table("job_events")
    op.drop_index(op.f("ix_jobs_status"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_project_id"), table_name="jobs")
    op.drop_table("jobs")
