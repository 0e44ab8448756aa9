"""Agent tokens on the AI routes (issue 22 §4): the request is charged to the
token's wallet through the normal charge path (category ``ai_inference``,
payee ``tollway``), within the wallet's limits; a dead token is a 401, a
blocked category or payee a 403, an over-cap request a 402 before serving."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select

from conftest import ADMIN, err
from fake_upstream import FakeUpstream
from test_inference import Env
from tollway.core.schema import usage_events

pytest_plugins = ["upstream_env"]  # the fixtures up and uenv

HI: list[Any] = [{"role": "user", "content": "Say hello."}]


async def _wallet(
    env: Env, policy: dict[str, Any] | None = None, limits: dict[str, Any] | None = None
) -> Any:
    w = await env.rt.wallets.create(customer_id=env.customer["id"], policy=policy)
    await env.rt.wallets.topup(w.id, 500_000, source="sys_funding")
    token, secret = await env.rt.wallets.grant(w.id, name="bot", limits=limits)
    return w, token, secret


async def _available(env: Env, wallet: Any) -> int:
    return (await env.rt.wallets.balance(wallet))[1]


async def _chat(env: Env, secret: str, **body: Any) -> httpx.Response:
    return await env.http.post(
        "/v1/chat/completions",
        json={"model": "up", "messages": HI, "max_tokens": 3, **body},
        headers={"authorization": f"Bearer {secret}"},
    )


async def test_an_agent_token_pays_for_chat_from_its_wallet(uenv: Env) -> None:
    w, token, secret = await _wallet(uenv)
    customer_before = (await uenv.balances())[uenv.customer["account_id"]]
    before = await _available(uenv, w)
    r = await _chat(uenv, secret)
    assert r.status_code == 200, r.text
    charged = int(r.headers["x-tollway-charged"])
    assert charged > 0
    await uenv.rt.ledger.riders_committed()
    assert before - await _available(uenv, w) == charged  # exactly the usage charge
    assert (await uenv.balances())[uenv.customer["account_id"]] == customer_before  # not the plan's
    async with uenv.rt.engine.connect() as conn:
        rows = (await conn.execute(select(usage_events))).mappings().all()
    assert len(rows) == 1 and rows[0]["amount"] == charged
    meta = json.loads(rows[0]["metadata"])
    assert (meta["category"], meta["payee"], meta["wallet_id"], meta["token_id"]) == (
        "ai_inference", "tollway", w.id, token.id,
    )  # fmt: skip


async def test_other_ai_shapes_take_the_agent_token_too(uenv: Env) -> None:
    w, _, secret = await _wallet(uenv)
    before = await _available(uenv, w)
    r = await uenv.http.post(
        "/v1/messages",
        json={"model": "up", "max_tokens": 3, "messages": HI},
        headers={"x-api-key": secret, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200, r.text
    r2 = await uenv.http.post(
        "/v1/responses",
        json={"model": "up", "input": "Say hello.", "max_output_tokens": 3, "store": False},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r2.status_code == 200, r2.text
    r3 = await uenv.http.post(
        "/ai/run/up",
        json={"prompt": "Say hi.", "max_tokens": 3},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r3.status_code == 200, r3.text
    await uenv.rt.ledger.riders_committed()
    spent = sum(int(x.headers["x-tollway-charged"]) for x in (r, r2, r3))
    assert before - await _available(uenv, w) == spent > 0


async def test_an_over_cap_request_is_refused_before_it_is_served(uenv: Env, up: FakeUpstream) -> None:
    policy = {"spending_limits": [{"amount": 5, "interval": "daily", "categories": ["ai_inference"]}]}
    w, _, secret = await _wallet(uenv, policy)
    calls = up.calls
    r = await _chat(uenv, secret, max_tokens=500)
    err(r, 402, "spending_limit_exceeded")
    assert up.calls == calls  # the upstream never saw it
    assert await _available(uenv, w) == 500_000


async def test_a_token_allowance_caps_inference(uenv: Env, up: FakeUpstream) -> None:
    w, _, secret = await _wallet(uenv, limits={"total_allowance": 3})
    calls = up.calls
    err(await _chat(uenv, secret, max_tokens=500), 402, "spending_limit_exceeded")
    assert up.calls == calls and await _available(uenv, w) == 500_000


async def test_insufficient_wallet_funds_refuse_before_serving(uenv: Env, up: FakeUpstream) -> None:
    w = await uenv.rt.wallets.create(customer_id=uenv.customer["id"])
    _, secret = await uenv.rt.wallets.grant(w.id)
    calls = up.calls
    err(await _chat(uenv, secret), 402, "insufficient_funds")
    assert up.calls == calls


async def test_the_autopilot_floor_stops_inference_too(uenv: Env, up: FakeUpstream) -> None:
    """Below the owner's spend floor, an agent token's AI requests are new spending: refused
    before serving (402 wallet_below_floor), until the floor is lifted."""
    w, _, secret = await _wallet(uenv)
    r = await uenv.http.put(f"/admin/wallets/{w.id}/autopilot", json={"spend_floor": 500_000}, headers=ADMIN)
    assert r.status_code == 200, r.text
    calls = up.calls
    err(await _chat(uenv, secret), 402, "wallet_below_floor")
    assert up.calls == calls and await _available(uenv, w) == 500_000
    await uenv.http.put(f"/admin/wallets/{w.id}/autopilot", json={"spend_floor": 100_000}, headers=ADMIN)
    assert (await _chat(uenv, secret)).status_code == 200


async def test_frozen_revoked_and_unknown_tokens_are_refused(uenv: Env) -> None:
    _, token, secret = await _wallet(uenv)
    await uenv.rt.wallets.freeze(token.id, "test")
    err(await _chat(uenv, secret), 401, "token_frozen")
    await uenv.rt.wallets.unfreeze(token.id)
    assert (await _chat(uenv, secret)).status_code == 200
    await uenv.rt.authorizer.revoke(token.id)
    err(await _chat(uenv, secret), 401, "token_revoked")
    err(await _chat(uenv, secret[:-1] + ("a" if secret[-1] != "a" else "b")), 401, "invalid_agent_token")
    err(await _chat(uenv, "tw_agt_nonsense"), 401, "invalid_agent_token")


async def test_the_wallet_policy_decides_category_and_payee(uenv: Env) -> None:
    _, _, secret = await _wallet(uenv, {"blocked_categories": ["ai_inference"]})
    err(await _chat(uenv, secret), 403, "category_blocked")
    _, _, secret = await _wallet(uenv, {"allowed_payees": ["api.example.com"]})
    err(await _chat(uenv, secret), 403, "payee_blocked")
    _, _, secret = await _wallet(uenv, limits={"categories": ["hosting"]})
    err(await _chat(uenv, secret), 403, "category_blocked")
    _, _, secret = await _wallet(uenv, limits={"single_use": True})
    err(await _chat(uenv, secret), 403, "single_use_token")


async def test_an_agent_token_is_no_admin_and_no_other_scope(uenv: Env) -> None:
    _, _, secret = await _wallet(uenv)
    r = await uenv.http.get("/v1/balance", headers={"authorization": f"Bearer {secret}"})
    err(r, 403, "missing_scope")
    r = await uenv.http.get("/admin/customers", headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 401
    assert (await uenv.http.get("/v1/models", headers=ADMIN)).status_code == 401


async def test_a_wallet_without_a_customer_pays_too(uenv: Env) -> None:
    w = await uenv.rt.wallets.create(owner="ops")
    await uenv.rt.wallets.topup(w.id, 500_000)
    _, secret = await uenv.rt.wallets.grant(w.id)
    r = await _chat(uenv, secret)
    assert r.status_code == 200, r.text
    await uenv.rt.ledger.riders_committed()
    assert 500_000 - await _available(uenv, w) == int(r.headers["x-tollway-charged"]) > 0
    r = await uenv.http.post(
        "/v1/responses",
        json={"model": "up", "input": "Say hello.", "max_output_tokens": 3, "store": True},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 200, r.text  # answered, not kept: no customer to keep it for
    got = await uenv.http.get(
        f"/v1/responses/{r.json()['id']}", headers={"authorization": f"Bearer {secret}"}
    )
    err(got, 404, "response_not_found")
