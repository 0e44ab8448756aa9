"""System account that free allocations are granted from (and return to).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
                "id": "sys_grants",
                "kind": "funding",
                "flags": 0,
                "debits_pending": 0,
                "debits_posted": 0,
                "credits_pending": 0,
                "credits_posted": 0,
                "customer_id": None,
                "name": "Free allocations granted (and used back)",
                "created_at_us": time.time_ns() // 1000,
            }
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM ledger_accounts WHERE id = 'sys_grants'")
