"""x402 claims: one execution per payment authorization (tollway.x402.claims).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "x402_claims",
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("lease_until_us", sa.BigInteger, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        # What a live claim holds of its payer's balance (atomic units), so that
        # concurrent payments cannot promise more than the payer has.
        sa.Column("payer", sa.String(64), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_x402_claims_payer", "x402_claims", ["payer", "lease_until_us"])


def downgrade() -> None:
    op.drop_table("x402_claims")
