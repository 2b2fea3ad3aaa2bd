"""The learning loop: assessments, decisions, jobs, snapshots; model metrics; rollout groups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("models") as b:
        b.add_column(sa.Column("metrics", sa.Text, nullable=True))
        b.add_column(sa.Column("gate", sa.Text, nullable=True))
        b.add_column(sa.Column("snapshot", sa.String(64), nullable=True))
        b.add_column(sa.Column("job_id", sa.Integer, nullable=True))
    with op.batch_alter_table("releases") as b:
        b.add_column(sa.Column("target_group", sa.String(100), nullable=True))
    op.create_table(
        "assessments",
        sa.Column("uuid", sa.String(36), sa.ForeignKey("corrections.uuid"), primary_key=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_label", sa.String(8), nullable=False),
        sa.Column("model_confidence", sa.Float, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("neighbour_label", sa.String(8), nullable=True),
        sa.Column("neighbour_share", sa.Float, nullable=True),
        sa.Column("support_devices", sa.Integer, nullable=False, server_default="0"),
        sa.Column("vote", sa.String(8), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("review", sa.String(16), nullable=True),
        sa.Column("reviewed_by", sa.String(100), nullable=True),
        sa.Column("reviewed_at", sa.Float, nullable=True),
        sa.Column("scored", sa.Float, nullable=False),
    )
    op.create_index("ix_assessments_mode_status", "assessments", ["mode", "status"])
    op.create_index("ix_assessments_image", "assessments", ["image_sha256"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), sa.ForeignKey("corrections.uuid"), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("previous", sa.String(32), nullable=True),
        sa.Column("by", sa.String(100), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_decisions_uuid", "decisions", ["uuid"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("epoch", sa.Integer, nullable=True),
        sa.Column("epochs", sa.Integer, nullable=True),
        sa.Column("percent", sa.Float, nullable=False, server_default="0"),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(100), nullable=False),
        sa.Column("requested", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("heartbeat", sa.Float, nullable=True),
        sa.Column("worker", sa.String(100), nullable=True),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("snapshot", sa.String(64), nullable=True),
        sa.Column("metrics", sa.Text, nullable=True),
        sa.Column("gate", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index(
        "uq_jobs_active",
        "jobs",
        ["name"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_table(
        "snapshots",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("n_train", sa.Integer, nullable=False),
        sa.Column("n_heldout", sa.Integer, nullable=False),
        sa.Column("devices", sa.Text, nullable=False),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_index("uq_jobs_active", "jobs")
    op.drop_table("jobs")
    op.drop_index("ix_decisions_uuid", "decisions")
    op.drop_table("decisions")
    op.drop_index("ix_assessments_image", "assessments")
    op.drop_index("ix_assessments_mode_status", "assessments")
    op.drop_table("assessments")
    with op.batch_alter_table("releases") as b:
        b.drop_column("target_group")
    with op.batch_alter_table("models") as b:
        b.drop_column("job_id")
        b.drop_column("snapshot")
        b.drop_column("gate")
        b.drop_column("metrics")
