"""Agent wallets: wallets, agent tokens, authorizations, audit.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tollway.core.migrations.system_accounts import add_funding_account, remove_account

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), nullable=True, index=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("evm_address", sa.String(42), nullable=True),
        sa.Column("evm_key", sa.Text, nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "agent_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), sa.ForeignKey("wallets.id"), nullable=False, index=True),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
        sa.Column("frozen_at_us", sa.BigInteger, nullable=True),
        sa.Column("frozen_reason", sa.String(500), nullable=True),
        sa.Column("used_at_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "wallet_authorizations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("token_id", sa.String(64), nullable=False, index=True),
        sa.Column("idempotency_key", sa.String(300), nullable=False, unique=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("payee", sa.String(255), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("legs", sa.Text, nullable=False),
        sa.Column("captured", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("memo", sa.String(500), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Index("ix_wallet_authorizations_status", "status", "expires_at_us"),
    )
    op.create_table(
        "wallet_audit",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), nullable=False, index=True),
        sa.Column("token_id", sa.String(64), nullable=True, index=True),
        sa.Column("authorization_id", sa.String(64), nullable=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    add_funding_account("sys_wallet_limits", "Wallet spending limits granted (and spent back)")


def downgrade() -> None:
    remove_account("sys_wallet_limits")
    for t in ("wallet_audit", "wallet_authorizations", "agent_tokens", "wallets"):
        op.drop_table(t)
