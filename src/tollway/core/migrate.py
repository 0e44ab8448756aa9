"""Run and inspect Alembic migrations on an async engine."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.storage import writer


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "tollway.core:migrations")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, target: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to ``target``; return (revision before, revision after)."""
    cfg = _config()

    def run(conn: Connection) -> tuple[str | None, str | None]:
        before = _current(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)
        return before, _current(conn)

    # Serialize concurrent starters: SQLite takes the write lock up front,
    # PostgreSQL an advisory lock held to the end of the transaction.
    async with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(7243091)"))
        return await conn.run_sync(run)


async def is_current(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head_revision()
