"""Plans, subscriptions, entitlements and credit through the real charge path,
against a fake upstream over HTTP, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conftest import ADMIN, err
from fake_upstream import FakeUpstream, model
from test_inference import Env, make_env

HI = [{"role": "user", "content": "hi"}]
PLANS = [
    {"lookup_key": "free", "name": "Free", "daily_requests": 3, "features": ["ai.chat"]},
    {
        "lookup_key": "pro",
        "name": "Pro",
        "price": "$10",
        "included_neurons": 1,
        "included_requests": 1000,
        "overage": True,
        "features": ["*"],
        "quotas": {"reports": 2},
    },
    {"lookup_key": "max", "name": "Max", "price": "$30", "features": ["*"]},
    {"lookup_key": "prepaid", "name": "Prepaid", "features": ["*"], "usd_per_1000_neurons": "$2"},
]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as u:
        yield u


async def billing_env(db_url: str, up: FakeUpstream, credit: int = 100_000_000) -> AsyncIterator[Env]:
    over = {
        "models": [model("a", up.url), {**model("e", up.url), "task": "embeddings"}],
        "inference": {"usd_per_1000_neurons": "$1", "free_neurons_per_day": 0},
        "billing": {"plans": PLANS, "default_plan": "free"},
    }
    async for e in make_env(db_url, credit=credit, **over):
        yield e


@pytest.fixture
async def env(db_url: str, up: FakeUpstream) -> AsyncIterator[Env]:
    async for e in billing_env(db_url, up):
        yield e


async def chat(env: Env) -> Any:
    body = {"model": "a", "messages": HI, "max_tokens": 6}
    return await env.http.post("/v1/chat/completions", json=body, headers=env.auth)


async def set_plan(env: Env, plan: str) -> dict[str, Any]:
    r = await env.http.put(
        f"/admin/customers/{env.customer['id']}/subscription", json={"plan": plan}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_a_feature_outside_the_plan_is_402_naming_plan_feature_and_upgrade(env: Env) -> None:
    before = await env.balances()
    r = await env.http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=env.auth)
    assert r.status_code == 402, r.text
    err = r.json()["error"]
    assert err["code"] == "feature_not_in_plan" and err["param"] == "ai.embeddings"
    assert "Free" in err["message"] and "/v1/billing/checkout" in err["message"]
    assert await env.balances() == before and await env.events() == []


async def test_a_plan_change_applies_on_the_next_request(env: Env) -> None:
    r = await env.http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=env.auth)
    assert r.status_code == 402
    sub = await set_plan(env, "pro")
    assert sub["plan"] == "pro" and sub["status"] == "active"
    r = await env.http.post("/v1/embeddings", json={"model": "e", "input": "x"}, headers=env.auth)
    assert r.status_code == 200, r.text


async def test_daily_request_quota_is_exact_under_concurrency(env: Env) -> None:
    rs = await asyncio.gather(*[chat(env) for _ in range(12)])
    codes = sorted(r.status_code for r in rs)
    assert codes == [200] * 3 + [402] * 9, codes
    refused = next(r for r in rs if r.status_code == 402).json()["error"]
    assert refused["code"] == "quota_exceeded" and "Free" in refused["message"]
    ent = (await env.http.get("/v1/entitlements", headers=env.auth)).json()
    assert ent["plan"] == "free"
    assert ent["quotas"] == [
        {"feature": "requests", "period": "day", "limit": 3, "used": 3, "held": 0, "remaining": 0}
    ]
    assert len([e for e in await env.events() if e["meter"] == "neurons"]) == 3


async def test_included_neurons_are_drawn_first_then_overage_is_invoiced(
    db_url: str, up: FakeUpstream
) -> None:
    async for env in billing_env(db_url, up, credit=10_000_000):  # exactly the price of Pro
        await set_plan(env, "pro")
        prepaid = (await env.rt.ledger.get_account(env.customer["account_id"])).balance
        assert prepaid == 0  # the first period was charged from it
        for _ in range(10):  # about 135 micro-USD each: past the 1,000 included
            r = await chat(env)
            assert r.status_code == 200, r.text
        spent = await env.spent()
        pv = (await env.http.get("/v1/billing/preview", headers=env.auth)).json()
        paid = pv["usage"]["paid_from"]
        assert paid["included"] == 1000  # 1 neuron at $1 per 1,000 = 1,000 micro-USD
        assert paid["overage"] == spent - 1000 > 0
        assert [ln["type"] for ln in pv["lines"]] == ["subscription", "overage"]
        assert pv["lines"][0]["amount"] == 10_000_000 and pv["lines"][1]["amount"] == paid["overage"]
        assert pv["total"] == 10_000_000 + paid["overage"]
        # Each usage event says how much of it was invoiced overage (Stripe's meter bills that share).
        events = [e for e in await env.events() if e["meter"] == "neurons"]
        assert sum(e["metadata"]["overage"] for e in events) == paid["overage"]
        assert events[0]["metadata"]["overage"] == 0  # the first calls were paid by the included neurons


async def test_without_overage_usage_beyond_credit_is_refused_in_plan_terms(
    db_url: str, up: FakeUpstream
) -> None:
    async for env in billing_env(db_url, up, credit=0):
        await set_plan(env, "prepaid")
        before = await env.balances()
        r = await chat(env)
        assert r.status_code == 402
        err = r.json()["error"]
        assert err["code"] == "insufficient_funds" and err["param"] == "neurons"
        assert "Prepaid plan" in err["message"] and "/v1/billing/checkout" in err["message"]
        assert await env.balances() == before


async def test_a_plans_rate_prices_its_neurons(env: Env) -> None:
    await set_plan(env, "prepaid")  # $2 per 1,000 neurons, twice the default
    r = await chat(env)
    assert r.status_code == 200
    (ev,) = await env.events()
    assert ev["amount"] == -(-ev["quantity"] * 2_000_000 // 1_000_000)  # micro-USD per 1,000 neurons


async def test_credit_grants_are_drawn_by_priority_before_prepaid(env: Env) -> None:
    await set_plan(env, "prepaid")
    cid = env.customer["id"]
    g1 = await env.http.post(
        f"/admin/customers/{cid}/credits", json={"amount": 30, "priority": 10}, headers=ADMIN
    )
    g2 = await env.http.post(
        f"/admin/customers/{cid}/credits", json={"amount": "$1", "priority": 5}, headers=ADMIN
    )
    assert g1.status_code == g2.status_code == 201, g1.text
    prepaid_before = (await env.rt.ledger.get_account(env.customer["account_id"])).balance
    assert (await chat(env)).status_code == 200
    spent = await env.spent()
    grants = (await env.http.get(f"/admin/customers/{cid}/credits", headers=ADMIN)).json()["data"]
    assert [g["priority"] for g in grants] == [5, 10]
    assert grants[0]["remaining"] == 1_000_000 - spent and grants[1]["remaining"] == 30
    assert (await env.rt.ledger.get_account(env.customer["account_id"])).balance == prepaid_before


async def test_a_grant_is_idempotent_and_bad_grants_change_nothing(env: Env) -> None:
    cid = env.customer["id"]
    body = {"amount": 500, "idempotency_key": "promo-1"}
    a = (await env.http.post(f"/admin/customers/{cid}/credits", json=body, headers=ADMIN)).json()
    b = (await env.http.post(f"/admin/customers/{cid}/credits", json=body, headers=ADMIN)).json()
    assert a["id"] == b["id"]
    before = await env.balances()
    for bad, code in (
        ({"amount": 0}, "invalid_amount"),
        ({"amount": 1.5}, "invalid_amount"),
        ({"amount": 5, "category": "free"}, "invalid_parameter"),
        ({"amount": 5, "expires_at_us": 1}, "invalid_expiry"),
        ({"amount": 600, "idempotency_key": "promo-1"}, "idempotency_conflict"),
    ):
        r = await env.http.post(f"/admin/customers/{cid}/credits", json=bad, headers=ADMIN)
        assert r.status_code in (400, 409, 422) and r.json()["error"]["code"] == code, (bad, r.text)
    r = await env.http.post("/admin/customers/cus_nope/credits", json={"amount": 5}, headers=ADMIN)
    assert r.status_code == 404
    assert await env.balances() == before


async def test_custom_quota_is_checked_and_consumed_exactly(env: Env) -> None:
    await set_plan(env, "pro")
    check = {"feature": "reports", "amount": 1, "consume": True}
    rs = await asyncio.gather(
        *[env.http.post("/v1/entitlements/check", json=check, headers=env.auth) for _ in range(5)]
    )
    assert sorted(r.status_code for r in rs) == [200, 200, 402, 402, 402]
    r = await env.http.post("/v1/entitlements/check", json={"feature": "anything"}, headers=env.auth)
    assert r.status_code == 200  # pro has "*"
    await set_plan(env, "max")  # an upgrade: no "reports" quota on max, features "*"
    r = await env.http.post("/v1/entitlements/check", json={"feature": "reports"}, headers=env.auth)
    assert r.status_code == 200


async def test_unknown_plan_and_unpayable_upgrade_change_nothing(db_url: str, up: FakeUpstream) -> None:
    async for env in billing_env(db_url, up, credit=1_000_000):
        cid = env.customer["id"]
        before = await env.balances()
        r = await env.http.put(f"/admin/customers/{cid}/subscription", json={"plan": "gold"}, headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["code"] == "plan_not_found"
        r = await env.http.put(f"/admin/customers/{cid}/subscription", json={"plan": "pro"}, headers=ADMIN)
        assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_funds"
        assert await env.balances() == before
        sub = (await env.http.get("/v1/billing/subscription", headers=env.auth)).json()
        assert sub["plan"] == "free"


async def test_a_key_with_only_balance_read_consumes_no_quota(env: Env) -> None:
    """Every route that uses a quota needs its own scope: a read-only key gets 403 and uses nothing."""
    await set_plan(env, "pro")
    r = await env.http.post(
        "/admin/keys", json={"customer_id": env.customer["id"], "scopes": ["balance:read"]}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    ro = {"authorization": f"Bearer {r.json()['key']}"}

    async def quotas() -> dict[tuple[str, str], int]:
        got = (await env.http.get("/v1/entitlements", headers=env.auth)).json()["quotas"]
        return {(q["feature"], q["period"]): q["remaining"] for q in got}

    before, balances = await quotas(), await env.balances()
    assert before[("reports", "billing_period")] == 2
    for amount in (1, 2):
        r = await env.http.post(
            "/v1/entitlements/check",
            json={"feature": "reports", "amount": amount, "consume": True},
            headers=ro,
        )
        err(r, 403, "missing_scope")
    for path, body in (
        ("/v1/chat/completions", {"model": "a", "messages": HI, "max_tokens": 6}),
        ("/v1/embeddings", {"model": "e", "input": "hi"}),
    ):
        err(await env.http.post(path, json=body, headers=ro), 403, "missing_scope")
    assert await quotas() == before and await env.balances() == balances
    assert (await env.http.get("/v1/balance", headers=ro)).status_code == 200  # what it may do
    r = await env.http.post(
        "/v1/entitlements/check", json={"feature": "reports", "consume": True}, headers=env.auth
    )
    assert r.status_code == 200 and (await quotas())[("reports", "billing_period")] == 1


async def test_vector_text_operations_are_held_to_the_plan_like_embeddings(env: Env) -> None:
    """upsert_text / query_text embed through the charge path: the free plan has
    no ai.embeddings, so they are refused as /v1/embeddings is, before any money moves."""
    base = "/v1/vectorize/indexes"
    r = await env.http.post(base, json={"name": "t", "dimensions": 4, "metric": "cosine"}, headers=env.auth)
    assert r.status_code == 200, r.text
    before = await env.balances()
    for path, body in (
        ("upsert_text", {"vectors": [{"id": "a", "text": "hello"}], "model": "e"}),
        ("query_text", {"text": "hello", "model": "e"}),
    ):
        r = await env.http.post(f"{base}/t/{path}", json=body, headers=env.auth)
        assert r.status_code == 402, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
            "feature_not_in_plan",
            "ai.embeddings",
        )
    assert await env.balances() == before and await env.events() == []
    await set_plan(env, "max")
    r = await env.http.post(
        f"{base}/t/upsert_text", json={"vectors": [{"id": "a", "text": "hi"}], "model": "e"}, headers=env.auth
    )
    assert r.status_code == 200 and r.json()["charged"] > 0, r.text
