"""The raw driver layer's SQL text: one INSERT per table and dialect, every column."""

from __future__ import annotations

import sqlite3

from tollway.core.schema import ledger_pending, ledger_transfers, usage_events
from tollway.ledger.rawsql import RawTx


def test_insert_sql_names_every_column_in_each_drivers_style() -> None:
    for table in (ledger_transfers, ledger_pending, usage_events):
        cols = [c.name for c in table.columns]
        lite, pg = RawTx(None, True).insert_sql(table), RawTx(None, False).insert_sql(table)
        assert lite == f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        assert pg.endswith(f"VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))})")
        # Built once: later batches reuse the same text (no per-batch column walk).
        assert RawTx(None, True).insert_sql(table) is lite
        assert RawTx(None, False).insert_sql(table) is pg


def test_insert_sql_runs_against_the_schema() -> None:
    db = sqlite3.connect(":memory:")
    cols = [c.name for c in ledger_pending.columns]
    db.execute(f"CREATE TABLE {ledger_pending.name} ({', '.join(cols)})")
    db.execute(RawTx(None, True).insert_sql(ledger_pending), ["x"] * len(cols))
    assert db.execute(f"SELECT count(*) FROM {ledger_pending.name}").fetchone() == (1,)
