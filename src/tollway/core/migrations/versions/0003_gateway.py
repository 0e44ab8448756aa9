"""AI gateway: per-key and per-customer limits, the request log, the budgets system account.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as b:
        b.add_column(sa.Column("limits", sa.Text, nullable=True))
    with op.batch_alter_table("api_keys") as b:
        b.add_column(sa.Column("limits", sa.Text, nullable=True))
    op.create_table(
        "request_log",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("deployment", sa.String(100), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("cache", sa.String(8), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("mneurons", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.BigInteger, nullable=False),
        sa.Column("ttft_ms", sa.BigInteger, nullable=True),
        sa.Column("downgraded_from", sa.String(100), nullable=True),
    )
    for col in ("created_at_us", "key_id", "customer_id"):
        op.create_index(f"ix_request_log_{col}", "request_log", [col])
    accounts = sa.table(
        "ledger_accounts",
        *(
            sa.column(c)
            for c in (
                "id",
                "kind",
                "flags",
                "debits_pending",
                "debits_posted",
                "credits_pending",
                "credits_posted",
                "customer_id",
                "name",
                "created_at_us",
            )
        ),
    )
    op.bulk_insert(
        accounts,
        [
            {
                "id": "sys_budgets",
                "kind": "funding",
                "flags": 0,
                "debits_pending": 0,
                "debits_posted": 0,
                "credits_pending": 0,
                "credits_posted": 0,
                "customer_id": None,
                "name": "Spend-limit budgets granted (and spent back)",
                "created_at_us": time.time_ns() // 1000,
            }
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM ledger_accounts WHERE id = 'sys_budgets'")
    op.drop_table("request_log")
    with op.batch_alter_table("api_keys") as b:
        b.drop_column("limits")
    with op.batch_alter_table("customers") as b:
        b.drop_column("limits")
