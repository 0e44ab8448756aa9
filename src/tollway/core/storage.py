"""Database engines: SQLite (WAL) by default, PostgreSQL (asyncpg) by URL."""

from __future__ import annotations

import sqlite3
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tollway.core.config import DatabaseConfig

IMMEDIATE = "tollway_immediate"
WAL_AUTOCHECKPOINT_PAGES = 100_000

# The PRAGMAs each SQLite engine's connections get, so a plain sqlite3
# connection opened beside the engine (see sqlite_connect) gets the same.
_PRAGMAS: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def async_url(url: str) -> URL:
    """Normalize a user URL to its async driver: aiosqlite or asyncpg."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(engine: AsyncEngine) -> str | None:
    return engine.url.database if is_sqlite(engine) else None


def make_engine(cfg: DatabaseConfig, **kwargs: Any) -> AsyncEngine:
    url = async_url(cfg.url)
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, poolclass=NullPool if not db else None, **kwargs)
        pragmas = [
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={cfg.sqlite_synchronous}",
            "PRAGMA busy_timeout=60000",
            "PRAGMA foreign_keys=ON",
            # Checkpoints run off the commit path (Ledger's checkpointer); this
            # only bounds the WAL (~400 MB) if no checkpointer is running.
            f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
        ]
        _PRAGMAS[engine.sync_engine] = pragmas

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy (not the driver) decide where transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            for p in pragmas:
                cur.execute(p)
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers take the lock up front so a batch never fails half-way
            # on a stale snapshot; readers start a plain deferred transaction.
            immediate = conn.get_execution_options().get(IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_async_engine(
        url,
        pool_size=cfg.pool_size,
        max_overflow=cfg.pool_size,
        # No pre-ping: it costs a round trip per checkout. A connection the
        # server dropped raises once, is invalidated, and the pool replaces it
        # (the ledger writer retries such a failure).
        pool_pre_ping=False,
        **kwargs,
    )


def sqlite_connect(engine: AsyncEngine, *, shared: bool = False) -> sqlite3.Connection:
    """A plain sqlite3 connection to the engine's database, with its PRAGMAs,
    in autocommit mode (the caller issues BEGIN/COMMIT). For one thread at a
    time (``shared``: used by more than one thread, never at once)."""
    conn = sqlite3.connect(
        sqlite_path(engine) or ":memory:", isolation_level=None, check_same_thread=not shared
    )
    for p in _PRAGMAS.get(engine.sync_engine, ["PRAGMA busy_timeout=60000"]):
        conn.execute(p)
    return conn


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine, but its transactions take SQLite's write lock at BEGIN:
    a transaction that reads before it writes can then never fail on a stale
    snapshot when another connection commits in between."""
    return engine.execution_options(**{IMMEDIATE: True})


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))
