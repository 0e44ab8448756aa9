"""Billing: subscriptions, credit grants, usage rollups, Stripe state; usage_events.model.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tollway.core.migrations.system_accounts import add_funding_account, remove_account

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events") as b:
        b.add_column(sa.Column("model", sa.String(100), nullable=True))
    op.create_table(
        "subscriptions",
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), primary_key=True),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("anchor_us", sa.BigInteger, nullable=False),
        sa.Column("period_start_us", sa.BigInteger, nullable=False),
        sa.Column("period_end_us", sa.BigInteger, nullable=False),
        sa.Column("trial_end_us", sa.BigInteger, nullable=True),
        sa.Column("cancel_at_period_end", sa.Integer, nullable=False),
        sa.Column("pending_plan", sa.String(64), nullable=True),
        sa.Column("rev", sa.Integer, nullable=False),
        sa.Column("stripe_customer_id", sa.String(255), nullable=True, unique=True),
        sa.Column("stripe_subscription_id", sa.String(255), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "status IN ('trialing', 'active', 'past_due', 'canceled')", name="ck_subscriptions_status"
        ),
    )
    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), nullable=False, index=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("expired_at_us", sa.BigInteger, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True, unique=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_credit_grants_amount"),
        sa.CheckConstraint("category IN ('paid', 'promotional')", name="ck_credit_grants_category"),
    )
    op.create_table(
        "usage_rollups",
        sa.Column("day", sa.String(8), primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("feature", sa.String(100), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("anomaly", sa.Integer, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "stripe_objects",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("local_id", sa.String(200), primary_key=True),
        sa.Column("stripe_id", sa.String(255), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("received_at_us", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(500), nullable=False),
    )
    op.create_table(
        "billing_state",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    add_funding_account("sys_quotas", "Plan quotas granted (and used back), in their own units")


def downgrade() -> None:
    remove_account("sys_quotas")
    for t in (
        "billing_state",
        "stripe_events",
        "stripe_objects",
        "usage_rollups",
        "credit_grants",
        "subscriptions",
    ):
        op.drop_table(t)
    with op.batch_alter_table("usage_events") as b:
        b.drop_column("model")
