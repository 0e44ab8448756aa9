"""Property-based tests of the whole HTTP API against its own OpenAPI schema:
no 5xx, documented status codes and content types, and every error in the one
shape ``{"error": {"type", "code", "message", "param"}}``."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from conftest import ADMIN, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime

_DB = Path(tempfile.mkdtemp(prefix="tollway-st-")) / "tollway.db"
_SETTINGS = settings_for(f"sqlite:///{_DB}")


async def _prepare() -> None:
    rt = Runtime.build(_SETTINGS)
    await rt.migrate()
    c = await rt.customers.create("schemathesis")
    await rt.ledger.transfer("sys_funding", c.account_id, 10_000_000)
    await rt.close()


asyncio.run(_prepare())
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_SETTINGS))

CHECKS = (
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    case.headers = {**(case.headers or {}), **ADMIN}
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"type", "code", "message", "param"}, body
