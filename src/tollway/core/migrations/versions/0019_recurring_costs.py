"""Recurring costs: hosting metered per deployment, and what could not be paid.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provision_billing",
        sa.Column("deployment_id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("worker_us", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("billed", sa.BigInteger, nullable=False),
        sa.Column("last_interval", sa.BigInteger, nullable=False),
        sa.Column("pending_key", sa.String(200), nullable=True),
        sa.Column("pending_amount", sa.BigInteger, nullable=False),
        sa.Column("pending_at_us", sa.BigInteger, nullable=True),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "provision_dues",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("subject_id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("failed_at_us", sa.BigInteger, nullable=False),
        sa.Column("grace_until_us", sa.BigInteger, nullable=False),
        sa.Column("suspended_at_us", sa.BigInteger, nullable=True),
        sa.Column("reclaim_at_us", sa.BigInteger, nullable=True),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provision_dues")
    op.drop_table("provision_billing")
