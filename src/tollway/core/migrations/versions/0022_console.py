"""The console: sign-in sessions and the hourly rollups its overview reads.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


MEASURES = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cost",
    "cache_hits",
    "latency_ms",
    "rate_limited",
    "budget_refused",
)


def _measures() -> list[sa.Column[int]]:
    return [sa.Column(m, sa.BigInteger, nullable=False) for m in MEASURES]


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at_us"])
    op.create_table(
        "console_requests_hourly",
        sa.Column("hour_us", sa.BigInteger, primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        *_measures(),
    )
    op.create_index(
        "ix_console_requests_hourly_customer", "console_requests_hourly", ["customer_id", "hour_us"]
    )
    op.create_table(
        "console_models_hourly",
        sa.Column("hour_us", sa.BigInteger, primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        *_measures(),
    )
    op.create_table(
        "console_customers_daily",
        sa.Column("day_us", sa.BigInteger, primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        *_measures(),
    )
    op.create_table(
        "console_revenue_hourly",
        sa.Column("hour_us", sa.BigInteger, primary_key=True),
        sa.Column("source", sa.String(16), primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "console_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("console_state")
    op.drop_table("console_revenue_hourly")
    op.drop_table("console_customers_daily")
    op.drop_table("console_models_hourly")
    op.drop_index("ix_console_requests_hourly_customer", "console_requests_hourly")
    op.drop_table("console_requests_hourly")
    op.drop_index("ix_console_sessions_expires", "console_sessions")
    op.drop_table("console_sessions")
