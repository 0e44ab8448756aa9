"""The console's tests' fixture (a pytest plugin): the seeded scenario."""

from __future__ import annotations

import httpx
import pytest

from console_support import Scenario, app_of, seed
from tollway.runtime import Runtime


@pytest.fixture
async def seeded(http: httpx.AsyncClient, art: Runtime) -> Scenario:
    """The scenario, seeded through ``http`` (an app on ``art``), the rollups refreshed."""
    s = await seed(http, art)
    await app_of(http).state.console.refresh()
    return s
