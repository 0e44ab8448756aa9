"""Run and inspect Alembic migrations on an async engine.

Alembic is imported only when a migration runs: a server starting on a
current database, and ``/healthz``, read the revision with one query and
compare it with :data:`HEAD`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.storage import writer

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration. tests/test_migrations.py checks it against Alembic's
# script directory, so a new migration must update it.
HEAD = "0025"


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "tollway.core:migrations")
    return cfg


def head_revision() -> str | None:
    return HEAD


def script_head() -> str | None:
    """The head as Alembic's script directory names it (what :data:`HEAD` must be)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):  # an empty database
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, target: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``target``; return (revision before, revision after)."""
    if target == "head" and await current_revision(engine) == HEAD:
        return HEAD, HEAD
    return await _run(engine, "upgrade", target)


async def downgrade(engine: AsyncEngine, target: str) -> tuple[str | None, str | None]:
    """Undo migrations down to ``target``; return (revision before, revision after)."""
    return await _run(engine, "downgrade", target)


async def _run(engine: AsyncEngine, direction: str, target: str) -> tuple[str | None, str | None]:
    def run(conn: Connection) -> tuple[str | None, str | None]:
        from alembic import command

        cfg = _config()
        before = _current(conn)
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, target)
        return before, _current(conn)

    # Serialize concurrent starters: SQLite takes the write lock up front,
    # PostgreSQL an advisory lock held to the end of the transaction.
    async with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(7243091)"))
        return await conn.run_sync(run)


async def is_current(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == HEAD
