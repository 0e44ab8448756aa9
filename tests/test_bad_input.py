"""Bad input never reaches a 500: lone surrogates, JSON nested past the limit,
integers past 64 bits (in bodies and query strings), schemas that are not JSON
Schemas. Each is a 400 in the one error shape, through the one parser
(tollway.core.jsonparse) every route uses, and changes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ADMIN, err
from test_inference import CHAT, EMBED, Env, make_env
from tollway.api.app import create_app
from tollway.api.jsonroute import JsonRoute
from tollway.core import jsonparse

SURROGATE = b'"hi \\ud800"'
DEEP = b"[" * 65 + b"]" * 65  # one past the limit
VERY_DEEP = b"[" * 5000 + b"]" * 5000
BIG = (b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616", b"1" + b"0" * 5000)


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    async for e in make_env(db_url):
        yield e


def _bodies(env: Env, value: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """``value`` placed in a body of each kind of parse: the fast path (chat,
    embeddings), a FastAPI route (admin), and routes that read their own body."""
    return [
        (
            "/v1/chat/completions",
            env.auth,
            b'{"model": "%s", "messages": [{"role": "user", "content": %s}]}' % (CHAT.encode(), value),
        ),
        ("/v1/embeddings", env.auth, b'{"model": "%s", "input": %s}' % (EMBED.encode(), value)),
        ("/admin/customers", ADMIN, b'{"name": %s}' % value),
        ("/v1/vectorize/indexes", env.auth, b'{"name": %s, "dimensions": 4, "metric": "cosine"}' % value),
        ("/v1/agents/support/sessions", env.auth, b'{"id": %s}' % value),
        ("/v1/usage/events", env.auth, b'{"events": [%s]}' % value),
    ]


async def _state(env: Env) -> tuple[Any, ...]:
    customers = (await env.http.get("/admin/customers", headers=ADMIN)).json()["data"]
    return await env.balances(), await env.events(), len(customers)


@pytest.mark.parametrize(
    ("value", "code"),
    [(SURROGATE, "invalid_json"), (DEEP, "json_too_deep"), (VERY_DEEP, "json_too_deep")]
    + [(b, "integer_out_of_range") for b in BIG],
)
async def test_bad_json_is_400_everywhere_and_changes_nothing(env: Env, value: bytes, code: str) -> None:
    before = await _state(env)
    for path, headers, body in _bodies(env, value):
        r = await env.http.post(path, content=body, headers={**headers, "content-type": "application/json"})
        err(r, 400, code)
    assert await _state(env) == before


async def test_the_limits_themselves_are_accepted() -> None:
    assert jsonparse.loads(b"[" * 64 + b"]" * 64) is not None
    assert jsonparse.loads(b"[9223372036854775807, -9223372036854775808]") == [2**63 - 1, -(2**63)]
    assert jsonparse.loads('{"s": "a 12345678901234567890 digit run in a string"}')["s"].startswith("a 1")


_PIECES = ["1", "9", "0", "x", " ", "\u0661", "\ud800", "\u00e9"]  # with an Arabic-Indic digit, a surrogate


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60),
        st.lists(st.sampled_from(_PIECES), max_size=60).map("".join),
    ).map(lambda v: v + "1" * 18 if isinstance(v, str) and v.endswith("1") else v)
)
def test_the_digit_run_check_finds_what_the_regex_would(raw: bytes | str) -> None:
    """A run of 19 ASCII digits (an integer that may not fit 64 bits) is found as
    re's [0-9]{19} finds it, in bytes and in text (other scripts' digits are not)."""
    rx = re.compile(rb"[0-9]{19}") if isinstance(raw, bytes) else re.compile(r"[0-9]{19}")
    assert jsonparse._long(raw) == (rx.search(raw) is not None)  # type: ignore[arg-type]
    if isinstance(raw, bytes):
        assert jsonparse._long(bytearray(raw)) == (rx.search(raw) is not None)


async def test_a_websocket_message_uses_the_same_parser(env: Env) -> None:
    with pytest.raises(Exception) as e:  # the parser's error, in the one shape
        jsonparse.body(SURROGATE, "message")
    assert getattr(e.value, "code", None) == "invalid_json"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("after=9223372036854775808", "after"),
        ("after=18446744073709551616", "after"),
        ("after=-1", "after"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=1000000000000000000000000000000", "limit"),
    ],
)
async def test_out_of_range_query_integers_are_refused_not_clamped(env: Env, query: str, param: str) -> None:
    r = await env.http.get(f"/v1/agents/support/sessions/s1/messages?{query}", headers=env.auth)
    err(r, 400, "invalid_parameter", param)
    if param == "limit":
        err(await env.http.get(f"/v1/escalations?{query}", headers=ADMIN), 400, "invalid_parameter", param)


async def test_every_route_parses_json_through_the_one_parser(env: Env) -> None:
    app = create_app(rt=env.rt)

    def walk(routes: list[Any]) -> list[Any]:  # FastAPI keeps an included router whole
        found = []
        for r in routes:
            sub = getattr(r, "original_router", None)
            found += walk(sub.routes) if sub is not None else [r]
        return found

    routes = [r for r in walk(app.routes) if isinstance(r, APIRoute)]
    # The console's pages (tollway.console, below tollway.api) read no JSON: no body field at all.
    console = [r for r in routes if r.endpoint.__module__.startswith("tollway.console.")]
    assert console and all(r.body_field is None for r in console)
    routes = [r for r in routes if r not in console]
    assert routes and all(isinstance(r, JsonRoute) for r in routes), [
        r.path for r in routes if not isinstance(r, JsonRoute)
    ]


@pytest.mark.parametrize(
    "schema",
    [{"type": "foo"}, {"type": "string", "pattern": "(["}, {"type": "object", "required": "name"}],
)
async def test_an_invalid_json_schema_is_400_on_every_backend(env: Env, schema: dict[str, Any]) -> None:
    before = await env.balances()
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }
    r = await env.http.post("/v1/chat/completions", json=body, headers=env.auth)
    err(r, 400, "invalid_schema", "response_format.json_schema.schema")
    assert await env.balances() == before and await env.events() == []
