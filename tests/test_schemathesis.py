"""Property-based tests of the whole HTTP API against its own OpenAPI schema:
no 5xx, documented status codes and content types, and every error in the one
shape ``{"error": {"type", "code", "message", "param"}}`` (Anthropic's shape on
``/v1/messages``).

Every operation runs with each kind of credential (the admin token, an API
key, an agent token), and a second test puts hostile values into what the
schema generates: lone surrogates, any unicode, integers past 64 bits, JSON
nested past the limit (in bodies and query strings). The example counts keep
the file to about a minute; ``TOLLWAY_FUZZ_SCALE=20`` multiplies them for a
deeper hunt (``make fuzz``)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.python import asgi

from conftest import ADMIN, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime

SCALE = max(1, int(os.environ.get("TOLLWAY_FUZZ_SCALE", "1")))
_DB = Path(tempfile.mkdtemp(prefix="tollway-st-")) / "tollway.db"
_SETTINGS = settings_for(f"sqlite:///{_DB}")


async def _prepare() -> dict[str, dict[str, str]]:
    """A funded customer with an API key, and a wallet with an agent token."""
    rt = Runtime.build(_SETTINGS)
    await rt.migrate()
    c = await rt.customers.create("schemathesis")
    await rt.ledger.transfer("sys_funding", c.account_id, 10_000_000)
    _, key = await rt.keys.create(c.id)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as http:
        w = (await http.post("/admin/wallets", json={"customer_id": c.id}, headers=ADMIN)).json()
        await http.post(f"/admin/wallets/{w['id']}/topup", json={"amount": 1_000_000}, headers=ADMIN)
        r = await http.post(f"/admin/wallets/{w['id']}/tokens", json={"limits": {}}, headers=ADMIN)
        token = r.json()["token"]
    await rt.close()
    return {
        "admin": ADMIN,
        "api_key": {"Authorization": f"Bearer {key}"},
        "agent_token": {"Authorization": f"Bearer {token}"},
    }


CREDENTIALS = asyncio.run(_prepare())
APP = create_app(_SETTINGS)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

CHECKS = (
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
)
WHO = st.sampled_from(sorted(CREDENTIALS))
_TURN = itertools.cycle(sorted(CREDENTIALS))


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


HOSTILE = st.one_of(
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3).map(
        lambda s: "hi " + s
    ),  # lone surrogates
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),  # any unicode
    st.integers(min_value=2**63, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) - 1),
    st.integers(min_value=65, max_value=300).map(_deep),  # past the depth limit
)


def _replace_leaf(value: Any, hostile: Any, pick: int) -> Any:
    """``value`` with one of its leaves (at any depth, chosen by ``pick``) replaced."""
    if isinstance(value, dict) and value:
        key = sorted(value)[pick % len(value)]
        return {**value, key: _replace_leaf(value[key], hostile, pick // 3)}
    if isinstance(value, list) and value:
        i = pick % len(value)
        return [*value[:i], _replace_leaf(value[i], hostile, pick // 3), *value[i + 1 :]]
    return hostile


def _shape(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        if str(response.request.url).endswith("/v1/messages"):  # Anthropic's shape, on its route
            assert set(body) == {"type", "error"} and body["type"] == "error", body
            assert set(body["error"]) == {"type", "message"}, body
            return
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"type", "code", "message", "param"}, body


@schema.parametrize()
@settings(max_examples=10 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    case.headers = {**(case.headers or {}), **CREDENTIALS[next(_TURN)]}  # each kind in turn
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    _shape(response)


@schema.parametrize()
@schema.given(who=WHO, hostile=HOSTILE, pick=st.integers(min_value=0, max_value=10_000))
@settings(
    max_examples=5 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate]
)
def test_hostile_values_are_refused_never_a_500(
    case: schemathesis.Case, who: str, hostile: Any, pick: int
) -> None:
    """One field of a generated body (or one query parameter) replaced by a hostile value.
    (JSON goes out with ensure_ascii: a surrogate travels as a \\ud800 escape, as hostile clients send it.)"""
    headers = {**(case.headers or {}), **CREDENTIALS[who]}
    query, body = dict(case.query or {}), case.body if isinstance(case.body, dict) else None
    if body:
        body = _replace_leaf(body, hostile, pick)
    elif query and not isinstance(hostile, list):
        key = sorted(query)[pick % len(query)]
        query[key] = hostile if isinstance(hostile, int) else hostile.encode("utf-8", "replace").decode()
    data = None
    if body is not None:
        data, headers["content-type"] = json.dumps(body).encode(), "application/json"
    with asgi.get_client(APP) as client:
        url = "http://localhost" + case.formatted_path
        _shape(client.request(case.method, url, params=query, headers=headers, data=data))
