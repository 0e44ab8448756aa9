"""Migrations: idempotent, match the code's schema, and gate readiness."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import settings_for
from tollway.core import migrate
from tollway.core.schema import metadata
from tollway.runtime import Runtime


async def test_migrated_schema_matches_metadata(rt: Runtime) -> None:
    def diff(conn: object) -> list[object]:
        ctx = MigrationContext.configure(conn)  # type: ignore[arg-type]
        return list(compare_metadata(ctx, metadata))

    async with rt.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == []


def test_head_constant_is_the_script_directory_head() -> None:
    """A server on a current database never imports Alembic: it compares the
    database's revision with ``migrate.HEAD``, which must name the newest migration."""
    assert migrate.HEAD == migrate.script_head()


async def test_upgrade_is_idempotent(rt: Runtime) -> None:
    before, after = await rt.migrate()
    assert before == after == migrate.head_revision()


async def test_healthz_not_ready_until_migrated(tmp_path: Path) -> None:
    from tollway.api.app import create_app

    rt = Runtime.build(settings_for(f"sqlite:///{tmp_path / 'fresh.db'}"))
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/healthz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "migrations_pending"
        await rt.migrate()
        r = await c.get("/healthz")
        assert r.status_code == 200 and r.json()["migration"] == migrate.head_revision()
    await rt.close()


@pytest.mark.parametrize("url", ["sqlite:///x.db", "postgresql://u@h/db", "postgres://u@h/db"])
def test_urls_map_to_async_drivers(url: str) -> None:
    from tollway.core.storage import async_url

    assert async_url(url).drivername in ("sqlite+aiosqlite", "postgresql+asyncpg")
