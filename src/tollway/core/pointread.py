"""One-row reads on the request path, without SQLAlchemy's per-query cost.

SQLite: a plain in-process ``sqlite3`` connection (query-only).  A WAL reader
never waits for the writer, a committed write is visible at once, and a
point read by primary key takes microseconds, so it runs on the event loop
instead of hopping to aiosqlite's thread.

PostgreSQL: one ``fetchrow`` on a pooled asyncpg connection, outside any
transaction (a single round trip, no BEGIN/ROLLBACK).

SQL is written once with ``?`` placeholders; PostgreSQL gets ``$1, $2, …``.
Reads are never cached: a revoked key or a moved balance is seen by the next
request.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.storage import is_sqlite, sqlite_path


def numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (our SQL has no literal ``?``)."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


class PointReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(engine)
        self._conn: sqlite3.Connection | None = None
        self._pg_sql: dict[str, str] = {}

    async def one(self, sql: str, *args: Any) -> Any:
        """The first row of ``sql`` (or None)."""
        if self.sqlite:
            return self._sqlite().execute(sql, args).fetchone()
        pg = self._pg_sql.get(sql)
        if pg is None:
            pg = self._pg_sql[sql] = numbered(sql)
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            return await driver.fetchrow(pg, *args)

    def _sqlite(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(sqlite_path(self.engine) or ":memory:", isolation_level=None)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA query_only=1")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
