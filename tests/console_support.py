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
from tollway.agents.store import scoped
from tollway.core.ids import new_id
from tollway.core.schema import eval_grades as EG
from tollway.core.schema import eval_runs as ER
from tollway.core.schema import provision_deployments as PD
from tollway.core.schema import request_log as L
from tollway.core.schema import usage_events as U
from tollway.core.storage import writer
from tollway.evals.service import _summary
from tollway.ledger.ops import Usage
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
    budget_request: str  # an agent's budget request ($20 monthly for api_access) waiting for the owner
    bootstrap: str  # the bootstrap credential that asked it (a secret)
    shop_wallet: str  # an agent business: earned $1.50, paid $0.05 fees and $0.20 hosting this month
    shop_deployment: str  # its deployment "shop" (api.shop.example): the earnings and the hosting
    eval_run: str  # the support agent's graded run (2 sessions)
    eval_compare: str  # its comparison of v1 with v2
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
    # The agent asks its owner for a budget, with a bootstrap credential.
    boot = await post(f"/admin/wallets/{wal['id']}/bootstrap", {"name": "new agent"})
    budget = await post(
        "/v1/wallet/budget-requests",
        {"amount": "$20", "categories": ["api_access"], "purpose": "buy market data"},
        {"authorization": f"Bearer {boot['credential']}"},
    )
    shop, dep = await seed_shop(http, rt)
    run, compare = await seed_evals(rt, scoped(a["id"], "s1"))
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
        budget_request=budget["id"],
        bootstrap=boot["credential"],
        shop_wallet=shop,
        shop_deployment=dep,
        eval_run=run,
        eval_compare=compare,
        secrets=[ka["key"], kb["key"], tok["token"], ADMIN_TOKEN, boot["credential"]],
    )


async def seed_shop(http: httpx.AsyncClient, rt: Runtime) -> tuple[str, str]:
    """An agent business: a wallet with a deployment that earned $1.50 at
    api.shop.example (x402 earnings, $0.05 fee) and paid $0.20 hosting."""
    r = await http.post("/admin/wallets", json={"owner": "shop agent"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    w = r.json()
    await rt.ledger.transfer("sys_funding", w["account_id"], 3_000_000, description="top-up")
    dep, now = new_id("dep"), rt.clock.now_us()
    async with writer(rt.engine).begin() as conn:
        await conn.execute(
            insert(PD),
            [
                {
                    "id": dep, "name": "shop", "wallet_id": w["id"], "provider": "local", "live_version": 1,
                    "hostnames": json.dumps(["api.shop.example"]), "status": "active",
                    "last_request_at_us": now, "created_at_us": now, "updated_at_us": now,
                }
            ],
        )  # fmt: skip
    meta = {"rule_id": "r1", "host": "api.shop.example", "path": "/price", "wallet_id": w["id"]}
    await rt.ledger.transfer(
        "sys_settlement", w["account_id"], 1_500_000, usage=Usage("x402_earnings", 1, None, meta)
    )
    await rt.ledger.transfer(w["account_id"], "sys_fees", 50_000, description="x402 fee")
    hosting = {"category": "hosting", "deployment_id": dep}
    await rt.ledger.transfer(
        w["account_id"], "sys_settlement", 200_000, usage=Usage("hosting", 1, None, hosting)
    )
    return str(w["id"]), dep


def _grade(
    run_id: str, session: str, version: int, arm: str, scores: tuple[int, int, int], **checks: Any
) -> dict[str, Any]:
    c = {"guardrail_hits": [], "tool_calls": 0, "tool_errors": [], "refusals": 0, "budget_exhausted": False,
         "escalations": 0, **checks}  # fmt: skip
    c["passed"] = not c["guardrail_hits"] and not c["tool_errors"] and not c["budget_exhausted"]
    h, s, g = scores
    return {
        "id": new_id("evg"), "run_id": run_id, "agent": "support", "session_id": session, "version": version,
        "arm": arm, "escalated": 1, "helpfulness": h, "safety": s, "groundedness": g,
        "checks": json.dumps(c), "grader_output": json.dumps({"helpfulness": h}), "cost": 1_200,
        "created_at_us": 0,
    }  # fmt: skip


async def seed_evals(rt: Runtime, session: str) -> tuple[str, str]:
    """The rows the eval loop writes (tollway.evals.service): a run of the
    support agent grading two sessions (one with a guardrail hit and a tool
    error), and a comparison of v1 with v2 (B better on helpfulness)."""
    run, compare, now = new_id("evr"), new_id("evr"), rt.clock.now_us()
    run_grades = [
        _grade(run, session, 1, "a", (4, 5, 3)),
        _grade(run, session + "-2", 1, "a", (2, 4, 5), guardrail_hits=["pii"],
               tool_errors=[{"tool": "lookup", "status": "error", "error": "timeout"}], refusals=1),
    ]  # fmt: skip
    a = [_grade(compare, session, 1, "a", (3, 5, 4))]
    b = [_grade(compare, session, 2, "b", (5, 5, 4))]
    sa, sb = _summary(a), _summary(b)
    delta: dict[str, Any] = {k: round(sb["scores"][k] - sa["scores"][k], 3) for k in sa["scores"]}
    delta["checks_passed"] = round(sb["checks_passed"] - sa["checks_passed"], 3)
    common = {"agent": "support", "status": "done", "grader": "grader-model", "finished_at_us": now}
    async with writer(rt.engine).begin() as conn:
        await conn.execute(
            insert(ER),
            [
                {**common, "id": run, "kind": "run", "version": 1, "version_b": None, "cost": 2_400,
                 "summary": json.dumps({"sampled": 2, "examples_kept": 0, **_summary(run_grades)}),
                 "created_at_us": now - 2},
                {**common, "id": compare, "kind": "compare", "version": 1, "version_b": 2, "cost": 2_400,
                 "summary": json.dumps({"sampled": 1, "a": sa, "b": sb, "delta": delta}),
                 "created_at_us": now - 1},
            ],
        )  # fmt: skip
        await conn.execute(insert(EG), [*run_grades, *a, *b])
    return run, compare


def app_of(http: httpx.AsyncClient) -> Any:
    return http._transport.app  # type: ignore[attr-defined]


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
