"""A thin transaction on the raw driver connection (aiosqlite or asyncpg).

The ledger's hot path sends a handful of statements per batch of thousands
of requests; going straight to the driver skips SQLAlchemy's per-row
parameter processing, which was most of the cost.  SQL text is generated
from the same SQLAlchemy ``Table`` objects the migrations build.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

# Errors worth retrying one request at a time (constraint races, deadlocks, locks).
DRIVER_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, asyncpg.PostgresError)


class RawTx:
    def __init__(self, driver: Any, sqlite: bool) -> None:
        self.driver = driver
        self.sqlite = sqlite

    def ph(self, n: int, start: int = 1) -> list[str]:
        """``n`` placeholders in the driver's style."""
        return ["?"] * n if self.sqlite else [f"${i}" for i in range(start, start + n)]

    def in_clause(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        if self.sqlite:
            return f"{column} IN ({','.join('?' * len(values))})", list(values)
        return f"{column} = ANY($1::text[])", [list(values)]

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self.sqlite:
            return list(await self.driver.execute_fetchall(sql, args))
        return list(await self.driver.fetch(sql, *args))

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        if self.sqlite:
            await self.driver.execute(sql, args)
        else:
            await self.driver.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.driver.executemany(sql, rows)

    def insert_sql(self, table: Table) -> str:
        """``INSERT INTO table (every column) VALUES (...)`` in the driver's style:
        built once per table and dialect (it is on every ledger batch)."""
        key = (table, self.sqlite)
        sql = _INSERTS.get(key)
        if sql is None:
            cols = [c.name for c in table.columns]
            sql = _INSERTS[key] = (
                f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join(self.ph(len(cols)))})"
            )
        return sql


# insert_sql's statements, by (table, SQLite or not): the schema's tables live as
# long as the process.
_INSERTS: dict[tuple[Table, bool], str] = {}


class _InlineSqlite:
    """aiosqlite's methods over a plain sqlite3 connection: awaiting them
    completes at once, so a batch written against :class:`RawTx` runs whole
    on the calling thread (see :func:`run_inline`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute_fetchall(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return self.conn.execute(sql, args).fetchall()

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


def inline_tx(conn: sqlite3.Connection) -> RawTx:
    return RawTx(_InlineSqlite(conn), True)


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its awaits complete at once) to its end."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("an inline SQLite batch awaited real I/O")


@asynccontextmanager
async def raw_transaction(engine: AsyncEngine, *, immediate: bool = True) -> AsyncIterator[RawTx]:
    """One transaction on a pooled connection's driver; commit on success."""
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        assert driver is not None
        if sqlite:
            await driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield RawTx(driver, True)
            except BaseException:
                await driver.rollback()
                raise
            await driver.commit()
        else:
            async with driver.transaction():
                yield RawTx(driver, False)
