"""The AI binding of deployments: each deployment's agent token, sealed.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provision_ai_bindings",
        sa.Column(
            "deployment_id", sa.String(64), sa.ForeignKey("provision_deployments.id"), primary_key=True
        ),
        sa.Column("wallet_id", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("sealed_secret", sa.Text, nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provision_ai_bindings")
