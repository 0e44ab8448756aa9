"""Core tables: ledger accounts, transfers, pending holds, usage events, customers, API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    accounts = op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("debits_pending", sa.BigInteger, nullable=False),
        sa.Column("debits_posted", sa.BigInteger, nullable=False),
        sa.Column("credits_pending", sa.BigInteger, nullable=False),
        sa.Column("credits_posted", sa.BigInteger, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
            name="ck_ledger_accounts_nonnegative",
        ),
        sa.CheckConstraint(
            "(flags & 1) = 0 OR debits_pending + debits_posted <= credits_posted",
            name="ck_ledger_accounts_debits_bound",
        ),
        sa.CheckConstraint(
            "(flags & 2) = 0 OR credits_pending + credits_posted <= debits_posted",
            name="ck_ledger_accounts_credits_bound",
        ),
    )
    op.create_index("ix_ledger_accounts_customer_id", "ledger_accounts", ["customer_id"])
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("debit_account_id", sa.String(64), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("credit_account_id", sa.String(64), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("pending_id", sa.String(64), nullable=True),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_ledger_transfers_amount"),
    )
    op.create_index("ix_ledger_transfers_debit", "ledger_transfers", ["debit_account_id", "id"])
    op.create_index("ix_ledger_transfers_credit", "ledger_transfers", ["credit_account_id", "id"])
    for col in ("pending_id", "idempotency_key"):
        where = sa.text(f"{col} IS NOT NULL")
        op.create_index(
            f"ux_ledger_transfers_{col}",
            "ledger_transfers",
            [col],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_table(
        "ledger_pending",
        sa.Column("transfer_id", sa.String(64), sa.ForeignKey("ledger_transfers.id"), primary_key=True),
        sa.Column("debit_account_id", sa.String(64), nullable=False),
        sa.Column("credit_account_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_pending_expires_at_us", "ledger_pending", ["expires_at_us"])
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("transfer_id", sa.String(64), sa.ForeignKey("ledger_transfers.id"), nullable=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("meter", sa.String(100), nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_events_customer_id", "usage_events", ["customer_id"])
    op.create_index("ix_usage_events_created_at_us", "usage_events", ["created_at_us"])
    op.create_table(
        "customers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_api_keys_customer_id", "api_keys", ["customer_id"])

    now = time.time_ns() // 1000
    system = [
        ("sys_funding", "funding", "Money entering tollway (top-ups, grants)"),
        ("sys_revenue", "revenue", "Earned revenue"),
        ("sys_fees", "fees", "Fees"),
        ("sys_settlement", "settlement", "Settlement in transit"),
    ]
    op.bulk_insert(
        accounts,
        [
            {
                "id": i,
                "kind": k,
                "flags": 0,
                "debits_pending": 0,
                "debits_posted": 0,
                "credits_pending": 0,
                "credits_posted": 0,
                "customer_id": None,
                "name": n,
                "created_at_us": now,
            }
            for i, k, n in system
        ],
    )


def downgrade() -> None:
    for table in ("api_keys", "customers", "usage_events", "ledger_pending", "ledger_transfers"):
        op.drop_table(table)
    op.drop_table("ledger_accounts")
