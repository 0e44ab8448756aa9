"""A seeded scenario for the console's tests (unit and browser): two customers
with keys, request-log rows and usage of known figures, a subscription charge,
an x402 payment, a wallet payment waiting for approval, and an agent session
escalated to a person. Seeded over the admin API and the ledger, through an
app on ``rt`` (the agent runtime of agent_support.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import insert

from conftest import ADMIN, ADMIN_TOKEN
from tollway.core.ids import new_id
from tollway.core.schema import request_log as L
from tollway.core.schema import usage_events as U
from tollway.core.storage import writer
from tollway.runtime import Runtime

AGENT_SESSIONS = "/v1/agents/support/sessions"
ORIGIN = "http://tollway.test"


@dataclass
class Scenario:
    a: dict[str, Any]  # Ada Corp: the customer with the wallet and the agent session
    b: dict[str, Any]  # Bob Labs
    key_a: str
    key_b: str
    wallet: dict[str, Any]
    agent_token: str
    authorization: str  # waiting for approval: $5
    escalation: str
    request_b: str  # one of Bob's request-log rows
    secrets: list[str] = field(default_factory=list)  # none may ever be rendered


def log_row(customer: str | None, key: str | None, model: str, at: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_id("req"),
        "created_at_us": at,
        "key_id": key,
        "customer_id": customer,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "deployment": model,
        "status": 200,
        "error_code": None,
        "stream": 0,
        "cache": "MISS",
        "attempts": 1,
        "input_tokens": 100,
        "output_tokens": 50,
        "mneurons": 0,
        "cost": 1000,
        "latency_ms": 20,
        "ttft_ms": None,
        "downgraded_from": None,
        "end_user": None,
        "tags": None,
    }
    row.update(over)
    return row


async def seed(http: httpx.AsyncClient, rt: Runtime) -> Scenario:
    async def post(path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> dict[str, Any]:
        r = await http.post(path, json=body, headers=headers)
        assert r.status_code in (200, 201, 202), r.text
        out: dict[str, Any] = r.json()
        return out

    a = await post("/admin/customers", {"name": "Ada Corp"})
    b = await post("/admin/customers", {"name": "Bob Labs"})
    await rt.ledger.transfer("sys_funding", a["account_id"], 20_000_000)
    await rt.ledger.transfer("sys_funding", b["account_id"], 5_000_000)
    ka = await post("/admin/keys", {"customer_id": a["id"], "name": "ada-prod"})
    kb = await post("/admin/keys", {"customer_id": b["id"], "name": "bob-dev"})
    # Revenue: a subscription charge ($2), an x402 payment ($0.25), metered usage ($0.003).
    await rt.ledger.transfer(a["account_id"], "sys_revenue", 2_000_000, description="subscription: Pro plan")
    now = rt.clock.now_us()
    async with writer(rt.engine).begin() as conn:
        rows = [
            log_row(a["id"], ka["id"], "m-alpha", now - 3_000_000),
            log_row(a["id"], ka["id"], "m-alpha", now - 2_000_000),
            log_row(a["id"], ka["id"], "m-alpha", now - 1_000_000, cache="HIT", cost=0),
            log_row(
                b["id"], kb["id"], "m-beta", now - 2_500_000, input_tokens=10, output_tokens=10, cost=500
            ),
            log_row(
                b["id"],
                kb["id"],
                "m-beta",
                now - 1_500_000,
                status=429,
                error_code="rate_limit_exceeded",
                input_tokens=0,
                output_tokens=0,
                cost=0,
            ),
        ]
        await conn.execute(insert(L), rows)
        await conn.execute(
            insert(U),
            [
                {
                    "id": new_id("use"),
                    "transfer_id": None,
                    "account_id": a["account_id"],
                    "customer_id": a["id"],
                    "meter": "neurons",
                    "quantity": 3000,
                    "amount": 3000,
                    "metadata": json.dumps({"model": "m-alpha"}),
                    "created_at_us": now - 2_000_000,
                    "model": "m-alpha",
                },
                {
                    "id": new_id("use"),
                    "transfer_id": None,
                    "account_id": "sys_revenue",
                    "customer_id": None,
                    "meter": "x402",
                    "quantity": 1,
                    "amount": 250_000,
                    "metadata": json.dumps(
                        {"payer": "0xabc", "resource": "/paid/report", "network": "eip155:1337"}
                    ),
                    "created_at_us": now - 1_000_000,
                    "model": None,
                },
            ],
        )
    # A wallet payment above the approval threshold waits for a person.
    wal = await post("/admin/wallets", {"customer_id": a["id"], "policy": {"approval_threshold": "$1"}})
    await post(f"/admin/wallets/{wal['id']}/topup", {"amount": "$10"})
    tok = await post(f"/admin/wallets/{wal['id']}/tokens", {"limits": {}})
    auth = await post(
        "/v1/wallet/authorize",
        {
            "amount": 5_000_000,
            "payee": "api.example.com",
            "category": "api_access",
            "idempotency_key": "seed-1",
        },
        {"authorization": f"Bearer {tok['token']}"},
    )
    assert auth["status"] == "pending_approval", auth
    # An agent session that asked for a person.
    auth_a = {"authorization": f"Bearer {ka['key']}"}
    await post(AGENT_SESSIONS, {"id": "s1"}, auth_a)
    out = await post(f"{AGENT_SESSIONS}/s1/messages", {"content": "I want to talk to a human please"}, auth_a)
    assert out["status"] == "escalated", out
    return Scenario(
        a=a,
        b=b,
        key_a=ka["key"],
        key_b=kb["key"],
        wallet=wal,
        agent_token=tok["token"],
        authorization=auth["id"],
        escalation=out["escalation"]["id"],
        request_b=rows[3]["id"],
        secrets=[ka["key"], kb["key"], tok["token"], ADMIN_TOKEN],
    )


async def sign_in(http: httpx.AsyncClient, token: str) -> str:
    """Sign in; returns the session's CSRF token (read from a page's form)."""
    r = await http.post("/console/login", data={"token": token}, headers={"origin": ORIGIN})
    assert r.status_code == 303, r.text
    page = await http.get(r.headers["location"])
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    import re

    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)
