"""Fixtures for the agent tests (a pytest plugin): the stand-in model and the
tool server as real HTTP servers, and a runtime whose ``[agents]`` config
defines a support agent using both (agent_helpers.py holds the helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_helpers import AgentModel, ToolServer, agent_settings
from threaded import ThreadServer
from tollway.runtime import Runtime


@pytest.fixture(scope="session")
def agent_model() -> Iterator[tuple[AgentModel, str]]:
    app = AgentModel()
    with ThreadServer(app, lifespan="off") as srv:
        yield app, srv.url + "/v1"


@pytest.fixture(scope="session")
def tool_server() -> Iterator[tuple[ToolServer, str]]:
    app = ToolServer()
    with ThreadServer(app, lifespan="off") as srv:
        yield app, srv.url


@pytest.fixture
def agent_def(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Overrides of the support agent's definition (parametrize it indirectly)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def art(
    db_url: str,
    tmp_path: Path,
    agent_model: tuple[AgentModel, str],
    tool_server: tuple[ToolServer, str],
    agent_def: dict[str, Any],
) -> AsyncIterator[Runtime]:
    rt = Runtime.build(agent_settings(db_url, agent_model[1], tool_server[1], tmp_path, **agent_def))
    yield rt
    await rt.close()


@pytest.fixture
async def http(art: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    from tollway.api.app import create_app

    app = create_app(rt=art)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tollway.test") as c:
        yield c
