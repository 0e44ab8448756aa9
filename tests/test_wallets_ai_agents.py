"""An agent turn (``/v1/agents/...``) made with an agent token: charged to the
token's wallet like a chat completion (category ``ai_inference``)."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import select

from agent_helpers import customer_key
from conftest import ADMIN, err
from tollway.core.schema import usage_events
from tollway.runtime import Runtime

pytest_plugins = ["agent_support"]

BASE = "/v1/agents/support/sessions"


async def test_an_agent_turn_with_an_agent_token_is_paid_by_its_wallet(
    http: httpx.AsyncClient, art: Runtime
) -> None:
    await customer_key(http, art)
    c = (await http.get("/admin/customers", headers=ADMIN)).json()["data"][0]
    w = await art.wallets.create(customer_id=c["id"])
    await art.wallets.topup(w.id, 1_000_000, source="sys_funding")
    token, secret = await art.wallets.grant(w.id, name="support")
    auth = {"authorization": f"Bearer {secret}"}
    assert (await http.post(BASE, json={"id": "s1"}, headers=auth)).status_code == 201
    r = await http.post(f"{BASE}/s1/messages", json={"content": "hello there"}, headers=auth)
    assert r.status_code == 200, r.text
    cost = r.json()["usage"]["cost"]
    assert cost > 0
    await art.ledger.riders_committed()
    assert (await art.wallets.balance(w))[1] == 1_000_000 - cost
    async with art.engine.connect() as conn:
        rows = (await conn.execute(select(usage_events))).mappings().all()
    metas = [json.loads(r["metadata"]) for r in rows]
    assert sum(r["amount"] for r in rows) == cost
    assert {(m["category"], m["wallet_id"], m["token_id"]) for m in metas} == {
        ("ai_inference", w.id, token.id)
    }
    r = await http.post(f"{BASE}/s1/schedules", json={"content": "later", "delay_seconds": 60}, headers=auth)
    err(r, 403, "agent_token_not_allowed")  # a later turn would run without the token's limits
    await art.wallets.freeze(token.id, "test")
    err(await http.post(f"{BASE}/s1/messages", json={"content": "again"}, headers=auth), 401, "token_frozen")
