"""Changes and deletions by agent token are authorized like purchases: a
revoked, expired or frozen token changes nothing (403), the token's
categories must allow the change, the object must be its wallet's, and every
attempt is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN, settings_for
from provision_support import Agent
from tollway.api.app import create_app
from tollway.runtime import Runtime


@pytest.fixture
async def agent(db_url: str, tmp_path: Path) -> AsyncIterator[Agent]:
    s = settings_for(db_url, provision={"edge_port": 0, "data_dir": str(tmp_path / "prov")})
    rt = Runtime.build(s)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as h:
        a = await Agent(rt, h).setup()
        assert (
            await a.post("/domains", {"domain": "kill-switch.com", "idempotency_key": "d"})
        ).status_code == 201
        r = await a.post("/domains/kill-switch.com/records", {"type": "TXT", "name": "@", "content": "v=1"})
        assert r.status_code == 201, r.text
        yield a
    await rt.close()


async def _token_id(a: Agent) -> str:
    r = await a.http.get(f"/admin/wallets/{a.wallet['id']}/tokens", headers=ADMIN)
    out: str = r.json()["data"][0]["id"]
    return out


async def _unchanged(a: Agent, record_id: str) -> None:
    doms = (await a.http.get("/admin/provision/domains", headers=ADMIN)).json()["data"]
    assert [d["name"] for d in doms] == ["kill-switch.com"]
    assert [r.id for r in await a.rt.provision.domains.records("kill-switch.com")] == [record_id]


@pytest.mark.parametrize("how", ["revoked", "frozen"])
async def test_a_dead_token_changes_nothing(agent: Agent, how: str) -> None:
    record_id = (await agent.get("/domains/kill-switch.com/records")).json()["data"][0]["id"]
    token_id = await _token_id(agent)
    if how == "revoked":
        assert (
            await agent.http.post(f"/admin/agent-tokens/{token_id}/revoke", headers=ADMIN)
        ).status_code == 200
    else:
        await agent.rt.wallets.freeze(token_id, "runaway loop")
    code = {"revoked": "token_revoked", "frozen": "token_frozen"}[how]
    for r in (
        await agent.delete(f"/domains/kill-switch.com/records/{record_id}"),
        await agent.delete("/domains/kill-switch.com"),
        await agent.delete("/deployments/site"),
        await agent.post("/deployments/site/rollback", {}),
        await agent.get("/domains"),
        await agent.get("/domains/kill-switch.com/records"),
        await agent.get("/domains/check", domain="another.com"),
    ):
        assert r.status_code == 403 and r.json()["error"]["code"] == code, r.text
    await _unchanged(agent, record_id)
    audit = (await agent.http.get(f"/admin/wallets/{agent.wallet['id']}/audit", headers=ADMIN)).json()["data"]
    declined = [e for e in audit if e["event"] == "change"]
    assert len(declined) == 4 and all(e["detail"]["status"] == "declined" for e in declined), declined


async def test_changes_need_the_category_and_the_wallets_own_object(agent: Agent) -> None:
    record_id = (await agent.get("/domains/kill-switch.com/records")).json()["data"][0]["id"]
    r = await agent.http.post(
        f"/admin/wallets/{agent.wallet['id']}/tokens", json={"limits": {"categories": ["dns"]}}, headers=ADMIN
    )
    dns_only = {"authorization": f"Bearer {r.json()['token']}"}
    r = await agent.http.delete("/v1/broker/provision/domains/kill-switch.com", headers=dns_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "category_blocked", r.text
    other = await Agent(agent.rt, agent.http).setup()
    r = await other.delete(f"/domains/kill-switch.com/records/{record_id}")
    assert r.status_code == 404, r.text
    r = await other.delete("/domains/kill-switch.com")
    assert r.status_code == 404, r.text
    await _unchanged(agent, record_id)
    # The owner's live token may; the deletion is audited.
    r = await agent.delete(f"/domains/kill-switch.com/records/{record_id}")
    assert r.status_code == 200 and r.json()["deleted"], r.text
    audit = (await agent.http.get(f"/admin/wallets/{agent.wallet['id']}/audit", headers=ADMIN)).json()["data"]
    change = next(e for e in audit if e["event"] == "change" and e["detail"]["status"] == "allowed")
    assert change["detail"]["action"] == "delete_record" and change["actor"] == "agent"
