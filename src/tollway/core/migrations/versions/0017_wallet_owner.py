"""Budget requests (bootstrap credentials, requests), per-wallet autopilot settings, and
an index on usage events by transfer (a wallet's P&L).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_events_transfer_id", "usage_events", ["transfer_id"])
    op.create_table(
        "wallet_bootstraps",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_wallet_bootstraps_wallet_id", "wallet_bootstraps", ["wallet_id"])
    op.create_table(
        "wallet_budget_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("raise_of", sa.String(64), nullable=True),
        sa.Column("asked", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(1000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("approved", sa.Text, nullable=True),
        sa.Column("token_id", sa.String(64), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("decided_at_us", sa.BigInteger, nullable=True),
        sa.Column("issued_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_wallet_budget_requests_wallet_id", "wallet_budget_requests", ["wallet_id"])
    op.create_index("ix_wallet_budget_requests_status", "wallet_budget_requests", ["status", "expires_at_us"])
    op.create_table(
        "wallet_autopilot",
        sa.Column("wallet_id", sa.String(64), sa.ForeignKey("wallets.id"), primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("below_floor_since_us", sa.BigInteger, nullable=True),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_transfer_id", "usage_events")
    op.drop_table("wallet_autopilot")
    op.drop_index("ix_wallet_budget_requests_status", "wallet_budget_requests")
    op.drop_index("ix_wallet_budget_requests_wallet_id", "wallet_budget_requests")
    op.drop_table("wallet_budget_requests")
    op.drop_index("ix_wallet_bootstraps_wallet_id", "wallet_bootstraps")
    op.drop_table("wallet_bootstraps")
