"""Fixtures shared by the API-shape tests: a FakeUpstream (per module) and an
in-process tollway whose model ``up`` points at it. Import both names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from fake_upstream import FakeUpstream, model
from test_inference import Env, make_env


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as u:
        yield u


@pytest.fixture
async def uenv(db_url: str, up: FakeUpstream) -> AsyncIterator[Env]:
    async for e in make_env(db_url, models=[model("up", up.url)]):
        yield e
