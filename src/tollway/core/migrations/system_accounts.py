"""For migrations: add or remove one of the ledger's system accounts (a
``funding`` account, unbounded, with zero balances). Kept apart from the
application's code so old migrations keep meaning what they meant."""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

_ACCOUNTS = sa.table(
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


def add_funding_account(account_id: str, name: str) -> None:
    op.bulk_insert(
        _ACCOUNTS,
        [
            {
                "id": account_id,
                "kind": "funding",
                "flags": 0,
                "debits_pending": 0,
                "debits_posted": 0,
                "credits_pending": 0,
                "credits_posted": 0,
                "customer_id": None,
                "name": name,
                "created_at_us": time.time_ns() // 1000,
            }
        ],
    )


def remove_account(account_id: str) -> None:
    op.execute(sa.text("DELETE FROM ledger_accounts WHERE id = :id").bindparams(id=account_id))
