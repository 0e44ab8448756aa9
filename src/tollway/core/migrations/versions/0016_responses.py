"""The Responses API's stored responses (`store`, `previous_response_id`).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_index("ix_responses_expires", "responses", ["expires_at_us"])


def downgrade() -> None:
    op.drop_index("ix_responses_expires", "responses")
    op.drop_table("responses")
