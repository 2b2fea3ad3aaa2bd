"""The first schema: devices, corrections, models and releases.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("group_name", sa.String(100), nullable=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("revoked", sa.Float, nullable=True),
        sa.Column("last_seen", sa.Float, nullable=True),
        sa.Column("hb_models", sa.Text, nullable=True),
        sa.Column("hb_pending", sa.Integer, nullable=True),
        sa.Column("hb_software", sa.String(64), nullable=True),
        sa.Column("hb_clock", sa.Float, nullable=True),
        sa.Column("hb_tunnel_url", sa.Text, nullable=True),
    )
    op.create_table(
        "corrections",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("strokes", sa.Text, nullable=True),
        sa.Column("predicted", sa.String(8), nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("model_name", sa.String(64), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("received", sa.Float, nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=True),
        sa.Column("embedding_version", sa.String(64), nullable=True),
    )
    op.create_index("ix_corrections_mode", "corrections", ["mode"])
    op.create_index("ix_corrections_device", "corrections", ["device_id"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("published_by", sa.String(100), nullable=False),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_models_name_version"),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.UniqueConstraint("name", "sequence", name="uq_releases_name_sequence"),
    )


def downgrade() -> None:
    op.drop_table("releases")
    op.drop_table("models")
    op.drop_index("ix_corrections_device", "corrections")
    op.drop_index("ix_corrections_mode", "corrections")
    op.drop_table("corrections")
    op.drop_table("devices")
