"""Charge recovery: the progress of long calls, checkpointed while they run.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "charge_progress",
        sa.Column("hold_id", sa.String(64), primary_key=True),
        sa.Column("legs", sa.Text, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("meter", sa.String(64), nullable=False),
        sa.Column("max_amount", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(250), nullable=True),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_charge_progress_updated", "charge_progress", ["updated_at_us"])


def downgrade() -> None:
    op.drop_index("ix_charge_progress_updated", table_name="charge_progress")
    op.drop_table("charge_progress")
