"""Confirmations and withdrawals: a correction's kind, and when and by whom it was withdrawn.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("corrections") as b:
        b.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="correction"))
        b.add_column(sa.Column("withdrawn", sa.Float, nullable=True))
        b.add_column(sa.Column("withdrawn_by", sa.String(16), nullable=True))
        b.add_column(sa.Column("withdrawal_received", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("corrections") as b:
        b.drop_column("withdrawal_received")
        b.drop_column("withdrawn_by")
        b.drop_column("withdrawn")
        b.drop_column("kind")
