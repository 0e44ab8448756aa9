"""Schedules: persisted timers with leases (tollway.schedules).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("cron", sa.String(100), nullable=True),
        sa.Column("next_run_us", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_schedules_due", "schedules", ["status", "next_run_us"])
    op.create_index("ix_schedules_owner", "schedules", ["owner", "status"])
    op.create_index("ix_schedules_owner_key", "schedules", ["owner", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_schedules_owner_key", table_name="schedules")
    op.drop_index("ix_schedules_owner", table_name="schedules")
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_table("schedules")
