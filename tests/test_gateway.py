"""The AI gateway end to end, in-process, against a real fake upstream over HTTP:
routing with retries and fallbacks, the response cache with single-flight,
budgets that hold under concurrency, downgrades, and the request log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conftest import ADMIN, err
from fake_upstream import PROMPT_TOKENS, WORDS, FakeUpstream, model
from test_inference import Env, make_env

HI = [{"role": "user", "content": "hi"}]
DEAD = "http://127.0.0.1:9/v1"  # nothing listens: connection refused
FAST_RETRY = {"max_attempts": 2, "backoff": "constant", "backoff_ms": 1}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as u:
        yield u


@pytest.fixture
def up2() -> Iterator[FakeUpstream]:
    with FakeUpstream() as u:
        yield u


def models(up: FakeUpstream, up2: FakeUpstream) -> list[dict[str, Any]]:
    return [
        model("a", up.url, retry=FAST_RETRY),
        model("b", up2.url, retry=FAST_RETRY),
        model("dead", DEAD, retry=FAST_RETRY),
        model("cheap", up2.url, neurons_per_m_input=1, neurons_per_m_output=1),
        {
            "name": "routed",
            "task": "chat",
            "backend": "router",
            "deployments": [{"model": "a", "weight": 1}, {"model": "b", "weight": 0}],
            "retry": {**FAST_RETRY, "max_attempts": 3},
        },
        {
            "name": "all-dead",
            "task": "chat",
            "backend": "router",
            "deployments": [{"model": "dead", "weight": 1}],
            "retry": FAST_RETRY,
        },
    ]


@pytest.fixture
async def env(db_url: str, up: FakeUpstream, up2: FakeUpstream) -> AsyncIterator[Env]:
    # Prices high enough that calls differ by model (and no free allowance).
    pricing = {"usd_per_1000_neurons": "$1", "free_neurons_per_day": 0}
    async for e in make_env(db_url, credit=10_000_000, models=models(up, up2), inference=pricing):
        yield e


def chat(model_name: str, **extra: Any) -> dict[str, Any]:
    return {"model": model_name, "messages": HI, "max_tokens": 6, **extra}


async def post(env: Env, body: dict[str, Any], **headers: str) -> Any:
    return await env.http.post("/v1/chat/completions", json=body, headers={**env.auth, **headers})


async def logged(env: Env, **params: Any) -> list[dict[str, Any]]:
    r = await env.http.get("/admin/requests", params={"limit": 1000, **params}, headers=ADMIN)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["data"]
    return rows


# ------------------------------------------------------------------- routing


async def test_upstream_is_streamed_only_when_the_caller_streams(env: Env, up: FakeUpstream) -> None:
    """A whole answer is asked for whole (no SSE to parse), and charged the same."""
    whole = await post(env, chat("a"))
    streamed = await post(env, chat("a", stream=True, stream_options={"include_usage": True}))
    assert whole.status_code == streamed.status_code == 200
    assert up.streamed == [False, True]
    assert whole.json()["choices"][0]["message"]["content"] == "".join(WORDS[:6])
    assert whole.json()["choices"][0]["finish_reason"] == "length"
    usage = [json.loads(ln[6:]) for ln in streamed.text.splitlines() if ln.startswith("data: {")][-1]
    assert usage["usage"] == whole.json()["usage"]
    assert usage["x_tollway"]["charged"] == whole.json()["x_tollway"]["charged"] > 0


async def test_retry_then_success_reports_provider_and_attempts(env: Env, up: FakeUpstream) -> None:
    up.fail_next(1, status=500)
    r = await post(env, chat("a"))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollway-provider"] == "a" and r.headers["x-tollway-attempts"] == "2"
    assert up.calls == 2


async def test_fallback_to_next_deployment_when_retries_are_used_up(
    env: Env, up: FakeUpstream, up2: FakeUpstream
) -> None:
    up.fail_next(3, status=503)  # "routed" tries a 3 times, then falls back to b
    r = await post(env, chat("routed"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-tollway-provider"], r.headers["x-tollway-attempts"]) == ("b", "4")
    assert (up.calls, up2.calls) == (3, 1)
    # Charged once, at the rates of the deployment that served it.
    [row] = await logged(env)
    assert (row["deployment"], row["attempts"], row["status"]) == ("b", 4, 200)
    assert row["cost"] == int(r.headers["x-tollway-charged"]) > 0


async def test_client_errors_are_not_retried(env: Env, up: FakeUpstream) -> None:
    up.fail_next(1, status=400)
    r = await post(env, chat("a"))
    assert r.status_code == 502 and up.calls == 1


async def test_every_attempt_failing_is_502_naming_provider_and_attempts_and_costs_nothing(env: Env) -> None:
    await env.http.get("/v1/usage", headers=env.auth)  # grant today's allowance (not a charge)
    before = await env.balances()
    for stream in (False, True):
        r = await post(env, chat("all-dead", stream=stream))
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_error"
        assert "2 attempts" in err["message"] and "dead" in err["message"]
    assert await env.balances() == before and await env.events() == []
    rows = await logged(env)
    assert [(x["status"], x["error_code"]) for x in rows] == [(502, "upstream_error")] * 2
    # What was tried: the deployment and the attempts (were null and 0).
    assert [(x["deployment"], x["attempts"]) for x in rows] == [("dead", 2)] * 2


async def test_every_authenticated_request_is_logged_400_and_500_included(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body refused by validation after the key was checked, and a handler
    that failed unexpectedly, are in the request log; an unauthenticated one is not."""
    bad = [
        {"model": "a", "messages": "not a list"},
        {"model": "a", "messages": HI, "max_tokens": -1},
        {"model": "a", "messages": HI, "n": 2},
    ]
    for body in bad:
        assert (await post(env, body)).status_code == 400
    r = await env.http.post("/v1/embeddings", json={"model": "e", "input": []}, headers=env.auth)
    assert r.status_code == 400, r.text
    r = await env.http.post("/ai/run/a", json={"prompt": 1}, headers=env.auth)
    assert r.status_code == 400, r.text
    assert (await env.http.post("/v1/chat/completions", json=bad[0])).status_code == 401  # no key: not logged

    async def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(env.rt.inference, "start_chat", broken)
    r = await post(env, chat("a"))
    assert r.status_code == 500, r.text
    await env.rt.gateway.log.flush()
    rows = await logged(env)
    got = sorted((x["endpoint"], x["status"]) for x in rows)
    assert got == sorted(
        [("chat.completions", 400)] * 3 + [("embeddings", 400), ("ai.run", 400), ("chat.completions", 500)]
    ), rows
    assert all(x["key_id"] and x["error_code"] for x in rows), rows
    assert [x["error_code"] for x in rows if x["status"] == 500] == ["internal_error"]


# --------------------------------------------------------------------- cache


async def test_cache_hit_replays_without_calling_upstream_and_is_free(env: Env, up: FakeUpstream) -> None:
    h = {"x-tollway-cache-ttl": "60"}
    first = await post(env, chat("a"), **h)
    assert first.status_code == 200 and first.headers["x-tollway-cache"] == "MISS"
    spent = await env.spent()
    second = await post(env, chat("a"), **h)
    assert second.headers["x-tollway-cache"] == "HIT" and up.calls == 1
    assert (
        second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    assert await env.spent() == spent  # the default cache price is free
    # A streamed request replays the cached entry as SSE, with usage.
    r = await post(env, chat("a", stream=True, stream_options={"include_usage": True}), **h)
    assert r.headers["x-tollway-cache"] == "HIT" and up.calls == 1
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(WORDS[:6]) and chunks[-1]["usage"]["completion_tokens"] == 6
    # Skipping the cache calls the model again.
    r = await post(env, chat("a"), **h, **{"x-tollway-skip-cache": "true"})
    assert r.headers["x-tollway-cache"] == "MISS" and up.calls == 2
    rows = await logged(env)
    assert sorted(x["cache"] for x in rows) == ["HIT", "HIT", "MISS", "MISS"]
    assert all(x["cost"] == 0 for x in rows if x["cache"] == "HIT")


async def test_streamed_miss_is_cached_and_replayed_as_json(env: Env, up: FakeUpstream) -> None:
    h = {"x-tollway-cache-ttl": "60"}
    r = await post(env, chat("a", stream=True), **h)
    assert r.status_code == 200 and "[DONE]" in r.text
    r = await post(env, chat("a"), **h)
    assert r.headers["x-tollway-cache"] == "HIT" and up.calls == 1
    assert r.json()["choices"][0]["message"]["content"] == "".join(WORDS[:6])


async def test_single_flight_makes_one_upstream_call(env: Env, up: FakeUpstream) -> None:
    up.delay_s = 0.3
    h = {"x-tollway-cache-ttl": "60"}
    rs = await asyncio.gather(*(post(env, chat("a"), **h) for _ in range(10)))
    assert all(r.status_code == 200 for r in rs)
    assert up.calls == 1
    assert sorted(r.headers["x-tollway-cache"] for r in rs) == ["HIT"] * 9 + ["MISS"]


async def test_custom_cache_key_and_per_customer_isolation(env: Env, up: FakeUpstream) -> None:
    h = {"x-tollway-cache-ttl": "60", "x-tollway-cache-key": "greeting"}
    await post(env, chat("a"), **h)
    r = await post(env, chat("a", messages=[{"role": "user", "content": "other"}]), **h)
    assert r.headers["x-tollway-cache"] == "HIT" and up.calls == 1
    # Another customer with the same key does not see this customer's entry.
    c = (await env.http.post("/admin/customers", json={"name": "Eve"}, headers=ADMIN)).json()
    await env.rt.ledger.transfer("sys_funding", c["account_id"], 1_000_000)
    k = (await env.http.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN)).json()["key"]
    r = await env.http.post(
        "/v1/chat/completions", json=chat("a"), headers={"Authorization": f"Bearer {k}", **h}
    )
    assert r.headers["x-tollway-cache"] == "MISS" and up.calls == 2


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-tollway-cache-ttl", "soon"),
        ("x-tollway-cache-ttl", "-5"),
        ("x-tollway-skip-cache", "maybe"),
        ("x-tollway-cache-key", "x" * 300),
    ],
)
async def test_malformed_cache_header_is_400_and_changes_nothing(
    env: Env, up: FakeUpstream, header: str, value: str
) -> None:
    before = await env.balances()
    r = await post(env, chat("a"), **{header: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_header", header)
    assert up.calls == 0 and await env.balances() == before


# ------------------------------------------------------------------- budgets


async def test_budget_holds_exactly_under_100_concurrent_requests(env: Env, up: FakeUpstream) -> None:
    await post(env, chat("a"))  # loads the model's backend
    # Each call reserves its maximum cost against the budget, then posts what it
    # cost; here the upstream reports the prompt at our bound, so cost = maximum.
    up.prompt_tokens = _prompt_bound(env, "a")
    r = await post(env, chat("a"))
    held = int(env.rt.inference.price(env.rt.inference.configs["a"], up.prompt_tokens, 6)[1])
    assert int(r.headers["x-tollway-charged"]) == held
    # A daily budget of exactly 10 reservations.
    key_id = (await logged(env))[0]["key_id"]
    r = await env.http.patch(f"/admin/keys/{key_id}/limits", json={"daily_budget": 10 * held}, headers=ADMIN)
    assert r.status_code == 200, r.text
    up.delay_s = 0.2
    before_calls = up.calls
    rs = await asyncio.gather(*(post(env, chat("a")) for _ in range(100)))
    codes = [r.status_code for r in rs]
    assert codes.count(200) == 10 and codes.count(402) == 90, codes
    assert {r.json()["error"]["code"] for r in rs if r.status_code == 402} == {"budget_exceeded"}
    assert up.calls - before_calls == 10
    view = (await env.http.get(f"/admin/keys/{key_id}/limits", headers=ADMIN)).json()
    [daily] = view["budgets"]
    assert daily["held"] == 0 and daily["spent"] <= daily["budget"]


def _prompt_bound(env: Env, name: str) -> int:
    from tollway.inference.backends.base import ChatParams

    return int(env.rt.inference._backends[name].prompt_tokens(ChatParams(messages=HI, max_tokens=6)))


async def test_budget_downgrades_to_the_cheaper_model(env: Env, up: FakeUpstream, up2: FakeUpstream) -> None:
    r = await post(env, chat("a"))
    key_id = (await logged(env))[0]["key_id"]
    assert int(r.headers["x-tollway-charged"]) > 50  # "a" no longer fits; "cheap" (1 micro-USD) does
    limits: dict[str, Any] = {"daily_budget": 50, "on_budget": "downgrade"}
    limits["downgrade_model"] = "cheap"
    assert (
        await env.http.patch(f"/admin/keys/{key_id}/limits", json=limits, headers=ADMIN)
    ).status_code == 200
    billing, built = env.rt.billing, []
    payer = billing.payer

    async def counted(*args: Any) -> Any:
        built.append(args)
        return await payer(*args)

    billing.payer = counted  # type: ignore[method-assign]
    r = await post(env, chat("a"))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollway-model"] == "cheap" and r.headers["x-tollway-downgraded-from"] == "a"
    assert up2.calls == 1
    assert len(built) == 1  # who pays is built once for the request, and reused by the downgrade
    rows = await logged(env)
    assert rows[0]["downgraded_from"] == "a" and rows[0]["model"] == "a"


async def test_bad_limits_are_400_and_change_nothing(env: Env) -> None:
    await post(env, chat("a"))
    key_id = (await logged(env))[0]["key_id"]
    for body in ({"rpm": -1}, {"daily_budget": "lots"}, {"downgrade_model": "nope"}, {"colour": 1}):
        r = await env.http.patch(f"/admin/keys/{key_id}/limits", json=body, headers=ADMIN)
        assert r.status_code == 400, (body, r.text)
    view = (await env.http.get(f"/admin/keys/{key_id}/limits", headers=ADMIN)).json()
    assert view["overrides"] == {}
    r = await env.http.get("/admin/keys/key_nope/limits", headers=ADMIN)
    assert r.status_code == 404


# --------------------------------------------------------------- request log


async def test_streamed_requests_are_logged_at_their_exact_cost(env: Env) -> None:
    r = await post(env, chat("a", stream=True, stream_options={"include_usage": True}))
    usage = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")][-1]["usage"]
    [row] = await logged(env)
    cfg = env.rt.inference.configs["a"]
    _, cost = env.rt.inference.price(cfg, usage["prompt_tokens"], usage["completion_tokens"])
    assert row["stream"] is True and row["cost"] == cost > 0
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, 6)
    assert row["cost"] == await env.spent() and row["ttft_ms"] is not None


async def test_request_log_filters_and_pages(env: Env) -> None:
    for _ in range(5):
        await post(env, chat("a"))
    await post(env, chat("nope"))
    rows = await logged(env)
    assert len(rows) == 6 and rows[0]["status"] == 404  # newest first
    assert len(await logged(env, status=200)) == 5
    assert len(await logged(env, model="nope")) == 1
    page = (await env.http.get("/admin/requests", params={"limit": 4}, headers=ADMIN)).json()
    assert len(page["data"]) == 4 and page["has_more"]
    rest = (
        await env.http.get(
            "/admin/requests", params={"limit": 4, "before": page["next_before"]}, headers=ADMIN
        )
    ).json()
    assert len(rest["data"]) == 2 and not rest["has_more"]
    assert {x["id"] for x in page["data"]}.isdisjoint({x["id"] for x in rest["data"]})


async def test_cache_hit_price_is_charged_through_the_ledger(db_url: str, up: FakeUpstream) -> None:
    over = {"gateway": {"cache_hit_price": "$0.002"}, "inference": {"free_neurons_per_day": 0}}
    async for env in make_env(db_url, credit=1_000_000, models=[model("a", up.url)], **over):
        h = {"x-tollway-cache-ttl": "60"}
        await post(env, chat("a"), **h)
        spent = await env.spent()
        r = await post(env, chat("a"), **h)
        assert r.headers["x-tollway-cache"] == "HIT" and r.headers["x-tollway-charged"] == "2000"
        assert await env.spent() == spent + 2000 and up.calls == 1
        hit = [x for x in await logged(env) if x["cache"] == "HIT"]
        assert [x["cost"] for x in hit] == [2000]


async def test_routed_embeddings_fall_back(db_url: str, up: FakeUpstream) -> None:
    emb = {"task": "embeddings", "retry": FAST_RETRY}
    models_ = [
        model("e-dead", DEAD, **emb),
        model("e-up", up.url, **emb),
        {
            "name": "e",
            "task": "embeddings",
            "backend": "router",
            "deployments": [{"model": "e-dead", "weight": 1}, {"model": "e-up", "weight": 0}],
            "retry": FAST_RETRY,
        },
    ]
    async for env in make_env(db_url, models=models_):
        r = await env.http.post("/v1/embeddings", json={"model": "e", "input": ["x", "y"]}, headers=env.auth)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 2 and r.headers["x-tollway-provider"] == "e-up"
        [row] = await logged(env)
        assert (row["deployment"], row["attempts"], row["endpoint"]) == ("e-up", 3, "embeddings")


async def test_request_log_prunes_rows_past_retention(env: Env) -> None:
    log = env.rt.gateway.log
    old = log.start("chat.completions")
    old.created_at_us -= 31 * 86_400_000_000
    log.record(old)
    await post(env, chat("a"))
    await log.flush()  # writes both, then prunes what is past log_retention_days (30)
    assert [x["model"] for x in await logged(env)] == ["a"]
    assert await log.prune() == 0


# ------------------------------------------------------- an upstream's bad 200s

NOT_ANSWERS = [
    b"<html>502 Bad Gateway</html>",
    b"[1, 2]",
    b'{"choices": "x"}',
    b'{"choices": [{"message": {"content": 5}, "delta": {"content": 5}}]}',
    b'"\\ud800"',
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("body", NOT_ANSWERS)
async def test_a_200_that_is_not_an_answer_is_a_failed_attempt(
    env: Env, up: FakeUpstream, body: bytes, stream: bool
) -> None:
    """Retried like a 5xx; when every attempt gets one, 502 and nothing charged."""
    up.garble_next(1, body if not stream else b"data: " + body + b"\n\n")
    r = await post(env, chat("a", stream=stream))
    assert r.status_code == 200, r.text
    assert r.headers["x-tollway-attempts"] == "2" and up.calls == 2
    before, spent = await env.balances(), await env.spent()
    up.garble_next(2, body)
    err(await post(env, chat("a", stream=stream)), 502, "upstream_error")
    assert await env.balances() == before and await env.spent() == spent


@pytest.mark.parametrize(
    "body", [b"<html>", b'{"data": [{"index": 0}]}', b'{"data": [{"index": 0, "embedding": 1}]}']
)
async def test_embeddings_200_that_is_not_an_answer_is_a_failed_attempt(
    db_url: str, up: FakeUpstream, body: bytes
) -> None:
    async for env in make_env(db_url, models=[model("e", up.url, task="embeddings", retry=FAST_RETRY)]):
        up.garble_next(1, body)
        r = await env.http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=env.auth)
        assert r.status_code == 200 and r.headers["x-tollway-attempts"] == "2", r.text
        before = await env.balances()
        up.garble_next(2, body)
        r = await env.http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=env.auth)
        err(r, 502, "upstream_error")
        assert await env.balances() == before


async def test_a_stream_reports_its_charge_without_include_usage(env: Env) -> None:
    r = await post(env, chat("a", stream=True))
    chunks = [json.loads(ln[6:]) for ln in r.text.splitlines() if ln.startswith("data: {")]
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "length" and "usage" not in final
    [row] = await logged(env)
    assert final["x_tollway"]["charged"] == row["cost"] > 0
    assert all("x_tollway" not in c for c in chunks[:-1])


async def test_fast_acknowledgement_hands_the_settle_to_the_gateway(db_url: str, up: FakeUpstream) -> None:
    """With [ledger] acknowledge = "fast" the charge is reported before it
    commits: the gateway keeps the settle and drains it (as on close), and
    then the ledger holds exactly what every answer reported."""
    emb = model("e", up.url, task="embeddings")
    pricing = {"usd_per_1000_neurons": "$1", "free_neurons_per_day": 0}
    over: dict[str, Any] = {"ledger": {"acknowledge": "fast"}, "inference": pricing}
    async for env in make_env(db_url, credit=10_000_000, models=[model("a", up.url), emb], **over):
        charged = 0
        whole = await post(env, chat("a"))
        streamed = await post(env, chat("a", stream=True))
        vectors = await env.http.post("/v1/embeddings", json={"model": "e", "input": ["x"]}, headers=env.auth)
        run = await env.http.post("/ai/run/a", json={"prompt": "hi", "max_tokens": 3}, headers=env.auth)
        for r in (whole, streamed, vectors, run):
            assert r.status_code == 200, r.text
            charged += int(r.headers.get("x-tollway-charged", 0))
        last = [json.loads(ln[6:]) for ln in streamed.text.splitlines() if ln.startswith("data: {")][-1]
        charged += last["x_tollway"]["charged"]
        assert charged > 0
        await env.rt.gateway.drain()
        account = await env.rt.ledger.get_account(env.customer["account_id"])
        assert account.debits_pending == 0 and account.balance == 10_000_000 - charged
