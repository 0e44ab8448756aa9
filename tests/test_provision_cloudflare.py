"""The cloudflare provider through the official SDK, against a strict local
stand-in of Cloudflare's API that checks the path, token and body of every
call: domains via Registrar, DNS records, Workers scripts and routes. The
agent never sees the token; failures at Cloudflare cost nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cloudflare_standin import ACCOUNT, TOKEN, CloudflareStandIn
from conftest import settings_for
from provision_support import Agent, hello, zipped
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.runtime import Runtime


@pytest.fixture
def cf() -> Iterator[tuple[CloudflareStandIn, str]]:
    standin = CloudflareStandIn()
    with ThreadServer(standin.app(), lifespan="off") as srv:
        yield standin, srv.url + "/client/v4"


@pytest.fixture
async def agent(
    db_url: str, tmp_path: Path, cf: tuple[CloudflareStandIn, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Agent]:
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    s = settings_for(
        db_url,
        provision={
            "provider": "cloudflare",
            "edge_port": 0,
            "data_dir": str(tmp_path),
            "cloudflare": {"account_id": ACCOUNT, "base_url": cf[1]},
        },
    )
    rt = Runtime.build(s)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as h:
        yield await Agent(rt, h).setup()
    await rt.close()


async def test_domains_dns_and_workers_through_the_sdk(
    agent: Agent, cf: tuple[CloudflareStandIn, str]
) -> None:
    standin = cf[0]
    standin.registrable = {"agent-shop.com"}
    before = await agent.available()
    r = await agent.get("/domains/check", domain="agent-shop.com")
    assert r.status_code == 200 and r.json()["available"] is True, r.text
    r = await agent.get("/domains/check", domain="taken-name.com")
    assert r.json()["available"] is False
    r = await agent.post("/domains", {"domain": "taken-name.com"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "domain_unavailable"
    r = await agent.post("/domains", {"domain": "agent-shop.com"})
    assert r.status_code == 201, r.text
    assert standin.registrar["agent-shop.com"] == {
        "id": "agent-shop.com", "name": "agent-shop.com", "auto_renew": True, "locked": True, "privacy": True,
    }  # fmt: skip
    assert [z["name"] for z in standin.zones.values()] == ["agent-shop.com"]
    r = await agent.post(
        "/domains/agent-shop.com/records", {"type": "MX", "content": "mx.example.net", "priority": 5}
    )
    assert r.status_code == 201, r.text
    (rec,) = standin.records.values()
    assert {k: rec[k] for k in ("name", "type", "content", "ttl", "priority")} == {
        "name": "agent-shop.com", "type": "MX", "content": "mx.example.net", "ttl": 1, "priority": 5,
    }  # fmt: skip
    r = await agent.delete(f"/domains/agent-shop.com/records/{r.json()['id']}")
    assert r.status_code == 200 and standin.records == {}
    r = await agent.post(
        "/deployments", {"name": "agent-api", "entrypoint": "app:app", "bundle": hello("cf")}
    )
    assert r.status_code == 201, r.text
    script = standin.scripts["agent-api"]
    assert script["metadata"]["main_module"] == "app.py" and script["parts"] == ["app.py"]
    assert script["metadata"]["compatibility_flags"] == ["python_workers"]
    r = await agent.post("/deployments/agent-api/hostnames", {"hostname": "api.agent-shop.com"})
    assert r.status_code == 200, r.text
    assert [(x["pattern"], x["script"]) for x in standin.routes.values()] == [
        ("api.agent-shop.com/*", "agent-api")
    ]
    assert before - await agent.available() == 10_440_000 + 1000 + 10_000 + 1000
    refused = [c for c in standin.calls if c[2] in ("unauthenticated",) or str(c[2]).startswith("refused")]
    assert refused == []
    assert TOKEN not in r.text
    r = await agent.delete("/deployments/agent-api")
    assert r.status_code == 200 and standin.scripts == {}


async def test_a_script_cloudflare_refuses_is_a_failed_deploy_and_costs_nothing(
    agent: Agent, cf: tuple[CloudflareStandIn, str]
) -> None:
    cf[0].reject_scripts = True
    before = await agent.available()
    r = await agent.post("/deployments", {"name": "broken", "entrypoint": "app:app", "bundle": hello("x")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "deploy_failed", r.text
    assert "failed to start" in r.json()["error"]["message"]
    site = zipped({"index.html": "<p>x</p>"})
    r = await agent.post("/deployments", {"name": "site", "kind": "static", "bundle": site})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_kind"
    assert await agent.available() == before
