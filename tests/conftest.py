"""Shared fixtures. Every ledger-touching test runs on each available backend:

- SQLite always (a fresh file per test, copied from a migrated template);
- PostgreSQL when ``TOLLWAY_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it):
  one database per session, migrated once, emptied between tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from tollway.core.schema import SYSTEM_ACCOUNTS, metadata
from tollway.core.storage import make_engine
from tollway.runtime import Runtime
from tollway.settings import Settings

pytest_plugins = ["stripe_support", "x402_gateway_support"]  # fixtures: Stripe stand-in, x402 origin

PG_URL = os.environ.get("TOLLWAY_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL")
ADMIN_TOKEN = "test-admin-token-0123456789"
PG_SKIP = "TOLLWAY_TEST_POSTGRES_URL not set: PostgreSQL backend not tested (SQLite only)"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP)),
]

# Every table the migrations create (so a new one is emptied between tests too).
TABLES = [t.name for t in reversed(metadata.sorted_tables)]


def pytest_report_header(config: pytest.Config) -> str:
    pg = f"PostgreSQL at {PG_URL}" if PG_URL else "SQLite only (set TOLLWAY_TEST_POSTGRES_URL for PostgreSQL)"
    return f"tollway backends: {pg}"


def err(r: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    """``r`` is the one error shape, with this status, code (and param)."""
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == code and set(e) == {"type", "code", "message", "param"}, e
    if param is not None:
        assert e["param"] == param, e


def settings_for(url: str, **over: object) -> Settings:
    s = Settings.model_validate(
        {
            "database": {"url": url, "sqlite_synchronous": "NORMAL"},
            "admin": {"token": ADMIN_TOKEN},
            **over,
        }
    )
    return s


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "tollway.db"

    async def go() -> None:
        rt = Runtime.build(settings_for(f"sqlite:///{path}"))
        await rt.migrate()
        await rt.close()

    asyncio.run(go())
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    assert PG_URL
    name = f"tollway_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name

    async def go() -> None:
        rt = Runtime.build(settings_for(url))
        await rt.migrate()
        await rt.close()

    asyncio.run(go())
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        dest = tmp_path / "tollway.db"
        shutil.copy(template, dest)
        return f"sqlite:///{dest}"
    url: str = request.getfixturevalue("pg_database")
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    engine = make_engine(settings_for(url).database)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)}"))
        await conn.execute(
            text(
                "INSERT INTO ledger_accounts (id, kind, flags, debits_pending, debits_posted,"
                " credits_pending, credits_posted, customer_id, name, created_at_us)"
                " VALUES (:id, :kind, 0, 0, 0, 0, 0, NULL, :name, 0)"
            ),
            [{"id": i, "kind": k, "name": n} for i, (k, n) in SYSTEM_ACCOUNTS.items()],
        )
    await engine.dispose()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return settings_for(db_url)


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(settings)
    yield runtime
    await runtime.close()


@pytest.fixture
async def client(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    from tollway.api.app import create_app

    app = create_app(rt=rt)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as c:
        yield c


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
