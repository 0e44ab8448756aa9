"""Migrations: idempotent, match the code's schema, and gate readiness."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conftest import settings_for
from tollway.core import migrate
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
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


async def test_pending_reservations_survive_the_one_btree_migration(tmp_path: Path) -> None:
    """0025 rebuilds ``ledger_pending`` on SQLite (``WITHOUT ROWID``, no expiry
    index): reservations open across the upgrade keep their holds and can still
    be posted, voided or expired, and the downgrade gives them back again."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"

    async def sql(rt: Runtime, q: str) -> list[tuple[object, ...]]:
        async with rt.engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(q))]

    rt = Runtime.build(settings_for(url))
    await migrate.upgrade(rt.engine, "0024")
    acct = await rt.ledger.create_account("customer", name="c")
    await rt.ledger.transfer("sys_funding", acct.id, 1_000)
    post = await rt.ledger.reserve(acct.id, "sys_revenue", 100, timeout_s=3600)
    void = await rt.ledger.reserve(acct.id, "sys_revenue", 200, timeout_s=3600)
    due = await rt.ledger.reserve(acct.id, "sys_revenue", 300, timeout_s=1)
    await rt.close()

    rt = Runtime.build(settings_for(url))
    before, after = await rt.migrate()
    assert (before, after) == ("0024", migrate.HEAD)
    [(ddl,)] = await sql(rt, "SELECT sql FROM sqlite_master WHERE name = 'ledger_pending'")
    assert str(ddl).rstrip().endswith("WITHOUT ROWID")
    # one b-tree: the table is its primary key's index, and there is no other
    indexes = "SELECT name FROM sqlite_master WHERE tbl_name = 'ledger_pending' AND type = 'index'"
    assert await sql(rt, indexes) == []
    rows = await sql(rt, "SELECT transfer_id, amount FROM ledger_pending ORDER BY amount")
    assert rows == [(post.id, 100), (void.id, 200), (due.id, 300)]
    a = await rt.ledger.get_account(acct.id)
    assert (a.debits_pending, a.debits_posted) == (600, 0)
    assert (await rt.ledger.post(post.id)).amount == 100
    await rt.ledger.void(void.id)
    with pytest.raises(TollwayError) as e:  # resolved once, as before the upgrade
        await rt.ledger.post(void.id)
    assert e.value.code == "pending_transfer_already_voided"
    rt.ledger.clock = ManualClock(rt.ledger.clock.now_us() + 2_000_000)  # past the third's timeout
    assert await rt.ledger.expire_due() == 1
    a = await rt.ledger.get_account(acct.id)
    assert (a.debits_pending, a.debits_posted) == (0, 100)
    assert await sql(rt, "SELECT COUNT(*) FROM ledger_pending") == [(0,)]
    held = await rt.ledger.reserve(acct.id, "sys_revenue", 50, timeout_s=3600)  # written in the new table
    await rt.close()

    rt = Runtime.build(settings_for(url))
    await migrate.downgrade(rt.engine, "0024")
    [(ddl,)] = await sql(rt, "SELECT sql FROM sqlite_master WHERE name = 'ledger_pending'")
    assert "WITHOUT ROWID" not in str(ddl)
    assert ("ix_ledger_pending_expires_at_us",) in await sql(rt, indexes)
    assert await sql(rt, "SELECT transfer_id, amount FROM ledger_pending") == [(held.id, 50)]
    await rt.close()
