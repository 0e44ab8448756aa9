"""``ledger_pending`` as one b-tree: no expiry index; on SQLite, ``WITHOUT ROWID``.

Every charged request inserts a row here at its reservation and deletes it at
its settle. Each b-tree the row lives in is one more WAL page written (and
flushed) in each of the two commits: with the rowid table, its primary key
index and the expiry index, 6 of the ~25 pages a request wrote at
concurrency 1 (``bench/wal_frames.py``). Clustered on its primary key, without
the expiry index, the row costs 2. The expiry sweep now scans the table, which
holds only open reservations (~9 ms a sweep with 100,000 of them open).

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_COLUMNS = "transfer_id, debit_account_id, credit_account_id, amount, description, expires_at_us"


def _rebuild(with_rowid: bool) -> None:
    """SQLite cannot change a table's rowid: copy it into a new table (same
    columns, same foreign key) in this migration's transaction. The columns are
    0001's, repeated here on purpose: a migration must not follow schema.py."""
    op.create_table(
        "ledger_pending_new",
        sa.Column("transfer_id", sa.String(64), sa.ForeignKey("ledger_transfers.id"), primary_key=True),
        sa.Column("debit_account_id", sa.String(64), nullable=False),
        sa.Column("credit_account_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(f"INSERT INTO ledger_pending_new ({_COLUMNS}) SELECT {_COLUMNS} FROM ledger_pending")
    op.drop_table("ledger_pending")
    op.rename_table("ledger_pending_new", "ledger_pending")


def upgrade() -> None:
    op.drop_index("ix_ledger_pending_expires_at_us", table_name="ledger_pending")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(with_rowid=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(with_rowid=True)
    op.create_index("ix_ledger_pending_expires_at_us", "ledger_pending", ["expires_at_us"])
