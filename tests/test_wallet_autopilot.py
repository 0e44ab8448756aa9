"""The autopilot, opt-in per wallet: the spend floor refuses new spending at
screening until a top-up; the periodic check tears down a deployment whose
costs exceeded its revenue over the window (through the provisioner's delete)
and audits each decision with its figures; and decides nothing otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from conftest import ADMIN, err, settings_for
from test_wallet_pnl import earn
from tollway.core.clock import ManualClock
from tollway.core.ids import new_id
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_versions as V
from tollway.core.storage import writer
from tollway.runtime import Runtime
from tollway.wallets.store import Wallet

DAY = 86_400


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, ManualClock]]:
    from tollway.api.app import create_app

    clock = ManualClock()
    rt = Runtime.build(settings_for(db_url), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as c:
        yield rt, c, clock
    await rt.close()


async def _events(
    http: httpx.AsyncClient, wallet_id: str, prefix: str = "autopilot_"
) -> list[dict[str, Any]]:
    data = (await http.get(f"/admin/wallets/{wallet_id}/audit", headers=ADMIN)).json()["data"]
    return [e for e in data if e["event"].startswith(prefix) and e["event"] != "autopilot_updated"]


async def test_the_floor_stops_new_spending_until_a_topup(env: Any) -> None:
    rt, http, _ = env
    w = await rt.wallets.create(owner="ada")
    await rt.wallets.topup(w.id, 3_000_000, source="sys_funding")
    _, tok = await rt.wallets.grant(w.id)
    r = await http.put(f"/admin/wallets/{w.id}/autopilot", json={"spend_floor": "$2"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["spend_floor"] == 2_000_000, r.text

    async def spend(amount: int, key: str) -> httpx.Response:
        body = {
            "amount": amount,
            "payee": "api.example.com",
            "category": "api_access",
            "idempotency_key": key,
        }
        return await http.post("/v1/wallet/authorize", json=body, headers={"authorization": f"Bearer {tok}"})

    assert (await spend(1_000_000, "a")).status_code == 200  # leaves exactly the floor
    r = await spend(1, "b")
    err(r, 402, "wallet_below_floor")
    assert r.json()["authorization"]["reason"] == "wallet_below_floor"
    assert (await rt.ledger.get_account(w.account_id)).available == 2_000_000  # nothing held
    # the periodic check sees the balance at the floor: no decision yet
    assert (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"] == []
    await rt.ledger.transfer(w.account_id, "sys_funding", 500_000, description="withdrawal")
    d = (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"]
    assert [x["decision"] for x in d] == ["autopilot_below_floor"]
    assert d[0]["available"] == 1_500_000 and d[0]["floor"] == 2_000_000 and "refused" in d[0]["explanation"]
    assert (await http.post("/admin/autopilot/check", headers=ADMIN)).json()[
        "data"
    ] == []  # once per crossing
    await rt.wallets.topup(w.id, 1_000_000, source="sys_funding")
    assert (await spend(400_000, "c")).status_code == 200
    d = (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"]
    assert [x["decision"] for x in d] == ["autopilot_floor_cleared"]
    assert [e["event"] for e in await _events(http, w.id)] == [
        "autopilot_floor_cleared",
        "autopilot_below_floor",
    ]
    # turned off: the floor no longer applies
    await http.put(
        f"/admin/wallets/{w.id}/autopilot", json={"enabled": False, "spend_floor": "$2"}, headers=ADMIN
    )
    assert (await spend(1_000_000, "d")).status_code == 200


async def test_a_floor_applies_to_a_payment_a_human_approves_later(env: Any) -> None:
    rt, _, _ = env
    w = await rt.wallets.create(owner="ada", policy={"approval_threshold": 100})
    await rt.wallets.topup(w.id, 1_000_000, source="sys_funding")
    _, tok = await rt.wallets.grant(w.id)
    d = await rt.authorizer.authorize(
        tok, amount=600_000, payee="a.example", category="api_access", idempotency_key="k"
    )
    assert d.status == "pending_approval"
    await rt.authorizer.autopilot.put(w.id, {"spend_floor": 500_000})
    out = await rt.authorizer.approve(d.id, "admin")
    assert out.status == "declined" and out.reason == "wallet_below_floor"


async def test_settings_are_validated_and_other_wallets_untouched(env: Any) -> None:
    rt, http, _ = env
    w = await rt.wallets.create(owner="ada")
    put = f"/admin/wallets/{w.id}/autopilot"
    err(await http.put(put, json={"spend_floor": -5}, headers=ADMIN), 400, "invalid_autopilot")
    err(
        await http.put(put, json={"teardown_unprofitable": {"window_days": 0}}, headers=ADMIN),
        400,
        "invalid_autopilot",
    )
    err(
        await http.put(put, json={"teardown_unprofitable": {"nope": 1}}, headers=ADMIN),
        400,
        "invalid_autopilot",
    )
    err(await http.put("/admin/wallets/wal_nope/autopilot", json={}, headers=ADMIN), 404, "wallet_not_found")
    assert (await http.get(put, headers=ADMIN)).json()["enabled"] is False


async def _deployment(rt: Runtime, w: Wallet, name: str, age_days: int, cost: int, tok: str) -> str:
    """A deployment (rows as the provisioner writes them) whose version cost ``cost`` (a hosting capture)."""
    now = rt.clock.now_us()
    d = await rt.authorizer.authorize(
        tok, amount=cost, payee="local", category="hosting", idempotency_key=name, memo=f"deploy {name}"
    )
    await rt.authorizer.capture(d.id)
    dep = new_id("dep")
    created = now - age_days * DAY * 1_000_000
    async with writer(rt.engine).begin() as conn:
        await conn.execute(insert(P), [{
            "id": dep, "name": name, "wallet_id": w.id, "provider": "local", "live_version": 1,
            "hostnames": "[]", "status": "active", "last_request_at_us": now, "created_at_us": created,
            "updated_at_us": created,
        }])  # fmt: skip
        await conn.execute(insert(V), [{
            "id": new_id("dver"), "deployment_id": dep, "version": 1, "kind": "asgi", "entrypoint": "app:app",
            "sha256": "0" * 64, "size": 1, "status": "live", "error": None, "authorization_id": d.id,
            "created_at_us": created,
        }])  # fmt: skip
    return dep


async def _status(rt: Runtime, dep: str) -> str:
    async with rt.engine.connect() as conn:
        return str((await conn.execute(select(P.c.status).where(P.c.id == dep))).scalar())


async def test_unprofitable_deployments_are_torn_down_and_the_rest_kept(env: Any) -> None:
    rt, http, clock = env
    w = await rt.wallets.create(owner="ada")
    other = await rt.wallets.create(owner="bob")
    await rt.wallets.topup(w.id, 10_000_000, source="sys_funding")
    await rt.wallets.topup(other.id, 10_000_000, source="sys_funding")
    _, tok = await rt.wallets.grant(w.id)
    _, tok_b = await rt.wallets.grant(other.id)
    losing = await _deployment(rt, w, "losing", 10, 2_000_000, tok)
    earning = await _deployment(rt, w, "earning", 10, 1_000_000, tok)
    young = await _deployment(rt, w, "young", 1, 3_000_000, tok)
    bobs = await _deployment(rt, other, "bobs", 10, 3_000_000, tok_b)  # not opted in
    await earn(rt, w.account_id, w.id, 1_500_000, "earning.tollway.localhost", "/", 0)
    await earn(rt, w.account_id, w.id, 500_000, "losing.tollway.localhost", "/x", 0)
    rule = {"teardown_unprofitable": {"window_days": 7, "min_age_days": 3}}
    assert (await http.put(f"/admin/wallets/{w.id}/autopilot", json=rule, headers=ADMIN)).status_code == 200
    clock.advance(seconds=1)
    decisions = (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"]
    assert [(d["decision"], d["deployment"]) for d in decisions] == [("autopilot_teardown", "losing")]
    d = decisions[0]
    assert (d["costs"], d["revenue"], d["net"]) == (2_000_000, 500_000, -1_500_000)
    assert "cost 2000000 and earned 500000" in d["explanation"]
    assert await _status(rt, losing) == "deleted"
    assert [await _status(rt, x) for x in (earning, young, bobs)] == ["active"] * 3
    [audited] = await _events(http, w.id)
    assert audited["event"] == "autopilot_teardown" and audited["actor"] == "autopilot"
    assert audited["detail"]["deployment_id"] == losing and audited["detail"]["costs"] == 2_000_000
    # the next check decides nothing (the loser is gone; the rest hold)
    assert (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"] == []
    # the P&L shows each live deployment's share, recurring hosting charges included
    memo = f"hosting deployment {young} (young): metered use"  # the recurring charge's memo
    d = await rt.authorizer.authorize(
        tok, amount=200_000, payee="local", category="hosting", idempotency_key="hosting-1", memo=memo
    )
    await rt.authorizer.capture(d.id)
    p = (await http.get(f"/admin/wallets/{w.id}/pnl", headers=ADMIN)).json()
    shares = {x["name"]: x["net"] for x in p["deployments"]}
    assert shares == {"earning": 500_000, "young": -3_200_000}
    # outside the window, old costs no longer count: the young one ages past min_age, its cost out of window
    clock.advance(seconds=8 * DAY)
    assert (await http.post("/admin/autopilot/check", headers=ADMIN)).json()["data"] == []


async def test_concurrent_checks_delete_it_and_audit_each_teardown(env: Any) -> None:
    rt, http, _ = env
    w = await rt.wallets.create(owner="ada")
    await rt.wallets.topup(w.id, 10_000_000, source="sys_funding")
    _, tok = await rt.wallets.grant(w.id)
    dep = await _deployment(rt, w, "loser", 10, 1_000_000, tok)
    await rt.authorizer.autopilot.put(w.id, {"teardown_unprofitable": {"window_days": 30, "min_age_days": 0}})
    results = await asyncio.gather(*(rt.authorizer.autopilot.check() for _ in range(3)))
    assert sum(len(r) for r in results) >= 1 and await _status(rt, dep) == "deleted"
    assert len([e for e in await _events(http, w.id) if e["event"] == "autopilot_teardown"]) == sum(
        len(r) for r in results
    )
