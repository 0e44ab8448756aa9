"""x402 rules agents make for the hosts their wallets own (issue 22 §2).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "x402_agent_rules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("wallet_id", sa.String(64), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("wallet_id", "name", name="uq_x402_agent_rules_wallet_name"),
    )
    op.create_index("ix_x402_agent_rules_host", "x402_agent_rules", ["host"])


def downgrade() -> None:
    op.drop_index("ix_x402_agent_rules_host", "x402_agent_rules")
    op.drop_table("x402_agent_rules")
