"""Provisioning end to end over tollway's HTTP API, on every backend: a funded
wallet's agent token buys a domain, sets DNS, deploys apps that go live in
worker processes behind the edge's Host routing, rolls back, and tears down.
Bad input is a 400 that charges nothing; a crashing version is marked
failed, the previous keeps serving, and its charge is voided."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import dns.zone
import httpx
import pytest

from conftest import ADMIN, settings_for
from provision_support import CRASHING, WSGI, Agent, hello, provisioned, zipped
from threaded import free_port
from tollway.api.app import create_app
from tollway.runtime import Runtime

pytestmark = pytest.mark.slow


@pytest.fixture
async def agent(db_url: str, tmp_path: Path) -> AsyncIterator[Agent]:
    async with provisioned(db_url, tmp_path / "prov") as a:
        yield a


async def edge(a: Agent, host: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.rt.provision.edge_port}") as c:
        return await c.get(path, headers={"host": host})


async def test_buy_a_domain_set_dns_and_export_the_zone(agent: Agent) -> None:
    before = await agent.available()
    r = await agent.get("/domains/check", domain="Bücher-Laden.com")
    assert r.status_code == 200, r.text
    chk = r.json()
    assert chk["domain"] == "xn--bcher-laden-thb.com" and chk["available"] and chk["price"] == 10_440_000
    r = await agent.post("/domains", {"domain": "bücher-laden.com", "idempotency_key": "d1"})
    assert r.status_code == 201, r.text
    assert r.json()["charged"] == 10_440_000
    assert await agent.available() == before - 10_440_000
    again = await agent.post("/domains", {"domain": "bücher-laden.com", "idempotency_key": "d1"})
    assert again.status_code == 201 and again.json()["id"] == r.json()["id"]  # a retry buys once
    assert await agent.available() == before - 10_440_000
    zone = "xn--bcher-laden-thb.com"
    for body in (
        {"type": "A", "name": "@", "content": "192.0.2.10", "ttl": 300},
        {"type": "AAAA", "name": "www", "content": "2001:db8::1"},
        {"type": "CNAME", "name": "blog", "content": "hosting.example.net"},
        {"type": "MX", "name": "@", "content": "mx.example.net", "priority": 10},
        {"type": "TXT", "name": "_dmarc", "content": 'v=DMARC1; p=none; "q"'},
    ):
        r = await agent.post(f"/domains/{zone}/records", body)
        assert r.status_code == 201, r.text
    assert await agent.available() == before - 10_440_000 - 5 * 1000
    r = await agent.get(f"/domains/{zone}/zone")
    assert r.status_code == 200
    z = dns.zone.from_text(r.text, origin=zone + ".", relativize=False)  # parses as RFC 1035
    assert str(z.find_rdataset("blog." + zone + ".", "CNAME")[0].target) == "hosting.example.net."
    assert z.find_rdataset(zone + ".", "MX")[0].preference == 10
    assert z.find_rdataset("www." + zone + ".", "AAAA")[0].address == "2001:db8::1"
    txt = z.find_rdataset("_dmarc." + zone + ".", "TXT")[0].strings
    assert b"".join(txt) == b'v=DMARC1; p=none; "q"'


async def test_invalid_names_and_records_are_400_and_charge_nothing(agent: Agent) -> None:
    before = await agent.available()
    for name, code in (
        ("-bad.com", "invalid_name"),
        ("a" * 64 + ".com", "invalid_name"),
        ("under_score.com", "invalid_name"),
        ("ab--cd.com", "invalid_name"),
        ("example.zzz", "unsupported_tld"),
        ("www.example.com", "invalid_name"),
        ("xn--zz.com", "invalid_name"),
    ):
        r = await agent.post("/domains", {"domain": name})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (name, r.text)
    r = await agent.post("/domains", {"domain": "my-shop.com"})
    assert r.status_code == 201
    spent = before - await agent.available()
    for body, code in (
        ({"type": "A", "content": "300.1.1.1"}, "invalid_content"),
        ({"type": "A", "content": "2001:db8::1"}, "invalid_content"),
        ({"type": "AAAA", "content": "10.0.0.1"}, "invalid_content"),
        ({"type": "A", "content": "10.0.0.1", "ttl": 30}, "invalid_ttl"),
        ({"type": "A", "content": "10.0.0.1", "ttl": 90_000}, "invalid_ttl"),
        ({"type": "MX", "content": "mx.example.net"}, "invalid_priority"),
        ({"type": "MX", "content": "mx.example.net", "priority": 70_000}, "invalid_priority"),
        ({"type": "CNAME", "name": "@", "content": "x.example.net"}, "cname_at_apex"),
        ({"type": "SRV", "content": "x"}, "invalid_record_type"),
        ({"type": "A", "name": "x.other.com.", "content": "10.0.0.1"}, "name_outside_zone"),
        ({"type": "TXT", "content": "bad\x00"}, "invalid_content"),
    ):
        r = await agent.post("/domains/my-shop.com/records", body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    assert (
        await agent.post("/domains/my-shop.com/records", {"type": "A", "name": "www", "content": "10.0.0.1"})
    ).status_code == 201
    r = await agent.post(
        "/domains/my-shop.com/records", {"type": "CNAME", "name": "www", "content": "a.example.net"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "cname_conflict"
    assert before - await agent.available() == spent + 1000


async def test_a_trademark_blocks_the_purchase_until_an_operator_overrides_it(agent: Agent) -> None:
    before = await agent.available()
    for name in ("apple-support-ai.com", "paypa1-login.com", "xn--pple-43d.com", "g00gle.com"):
        r = await agent.post("/domains", {"domain": name})
        assert r.status_code == 403, (name, r.text)
        err = r.json()["error"]
        assert err["code"] == "trademark_blocked" and err["param"] == "domain"
    r = await agent.get("/domains/check", domain="apple-support-ai.com")
    assert r.json()["blocked"]["mark"] == "apple" and r.json()["blocked"]["match"] == "brand_plus_generic"
    assert await agent.available() == before  # a blocked domain costs nothing
    r = await agent.http.post(
        "/admin/provision/overrides",
        json={
            "domain": "apple-support-ai.com",
            "wallet_id": agent.wallet["id"],
            "reason": "Apple's own agent",
        },
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    assert (await agent.post("/domains", {"domain": "apple-support-ai.com"})).status_code == 201
    audit = (await agent.http.get(f"/admin/wallets/{agent.wallet['id']}/audit", headers=ADMIN)).json()["data"]
    events = [e["event"] for e in audit]
    assert "trademark_override" in events and "trademark_blocked" in events
    assert "trademark_override_used" in events


async def test_deploy_route_by_host_roll_back_and_a_crash_keeps_the_old_version(agent: Agent) -> None:
    before = await agent.available()
    r = await agent.post(
        "/deployments", {"name": "shop", "kind": "asgi", "entrypoint": "app:app", "bundle": hello("v1")}
    )
    assert r.status_code == 201, r.text
    assert r.json()["deployed_version"] == 1 and r.json()["charged"] == 10_000
    assert (await edge(agent, "shop.tollway.localhost", "/x")).text == "hello v1 /x"
    r = await agent.post("/deployments", {"name": "shop", "entrypoint": "app:app", "bundle": hello("v2")})
    assert r.status_code == 201 and r.json()["live_version"] == 2
    assert (await edge(agent, "shop.tollway.localhost")).text == "hello v2 /"
    paid = before - await agent.available()
    assert paid == 20_000
    # A version that crashes: failed, the previous keeps serving, nothing charged.
    r = await agent.post("/deployments", {"name": "shop", "entrypoint": "app:app", "bundle": CRASHING})
    assert r.status_code == 422 and r.json()["error"]["code"] == "deploy_failed", r.text
    assert "boom at import" in r.json()["error"]["message"]
    assert (await edge(agent, "shop.tollway.localhost")).text == "hello v2 /"
    assert before - await agent.available() == paid
    info = (await agent.get("/deployments/shop")).json()
    assert [(v["version"], v["status"]) for v in info["versions"]] == [
        (3, "failed"),
        (2, "live"),
        (1, "ready"),
    ]
    r = await agent.post("/deployments/shop/rollback", {})
    assert r.status_code == 200 and r.json()["live_version"] == 1
    assert (await edge(agent, "shop.tollway.localhost")).text == "hello v1 /"
    # A hostname of the wallet's own domain, bound through a CNAME in its zone.
    assert (await agent.post("/domains", {"domain": "shop-demo.dev"})).status_code == 201
    r = await agent.post("/deployments/shop/hostnames", {"hostname": "www.shop-demo.dev"})
    assert r.status_code == 200, r.text
    assert r.json()["record"]["type"] == "CNAME"
    assert (await edge(agent, "www.shop-demo.dev")).text == "hello v1 /"
    assert (await edge(agent, "nothing.tollway.localhost")).status_code == 404
    r = await agent.delete("/deployments/shop")
    assert r.status_code == 200
    assert (await edge(agent, "shop.tollway.localhost")).status_code == 404


async def test_wsgi_and_static_bundles(agent: Agent) -> None:
    r = await agent.post(
        "/deployments",
        {"name": "legacy", "kind": "wsgi", "entrypoint": "app:app", "bundle": zipped({"app.py": WSGI})},
    )
    assert r.status_code == 201, r.text
    assert (await edge(agent, "legacy.tollway.localhost", "/p")).text == "wsgi /p"
    site = zipped({"public/index.html": "<h1>hi</h1>", "public/a.css": "h1{}"})
    r = await agent.post(
        "/deployments", {"name": "site", "kind": "static", "entrypoint": "public", "bundle": site}
    )
    assert r.status_code == 201, r.text
    assert (await edge(agent, "site.tollway.localhost")).text == "<h1>hi</h1>"
    assert (await edge(agent, "site.tollway.localhost", "/a.css")).text == "h1{}"


async def test_a_bundle_uploaded_as_multipart(agent: Agent) -> None:
    raw = base64.b64decode(hello("mp"))
    r = await agent.http.post(
        "/v1/broker/provision/deployments/upload-me/versions",
        files={"bundle": ("app.zip", raw, "application/zip")},
        data={"entrypoint": "app:app"},
        headers=agent.auth,
    )
    assert r.status_code == 201, r.text
    assert (await edge(agent, "upload-me.tollway.localhost")).text == "hello mp /"
    r = await agent.http.post(
        "/v1/broker/provision/deployments/upload-me/versions",
        files={"bundle": ("x.zip", b"not an archive", "application/zip")},
        data={"entrypoint": "app:app"},
        headers=agent.auth,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_bundle"


async def test_bad_bundles_are_400_and_charge_nothing(agent: Agent) -> None:
    before = await agent.available()
    for body, code in (
        ({"bundle": "not base64!"}, "invalid_bundle"),
        ({"bundle": zipped({"../evil.py": "x"})}, "unsafe_path"),
        ({"bundle": zipped({"/abs/app.py": "x"})}, "unsafe_path"),
        ({"bundle": zipped({"other.py": "x"})}, "entrypoint_not_found"),
        ({"bundle": hello("x"), "entrypoint": "app"}, "invalid_entrypoint"),
        ({"bundle": hello("x"), "kind": "php"}, "invalid_kind"),
        ({"bundle": hello("x"), "name": "Bad_Name"}, "invalid_name"),
        ({"bundle": zipped({"big.bin": b"0" * (21 * 1024 * 1024)})}, "bundle_too_large"),
    ):
        r = await agent.post("/deployments", {"name": "app", "entrypoint": "app:app", **body})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (code, r.text[:300])
    assert await agent.available() == before
    assert (await agent.get("/deployments")).json()["data"] == []


async def test_policy_limits_apply_to_purchases(db_url: str, tmp_path: Path) -> None:
    s = settings_for(db_url, provision={"edge_port": 0, "data_dir": str(tmp_path)})
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup(
            {"provider_caps": {"local": "$15"}, "blocked_categories": ["hosting"]}
        )
        assert (await a.post("/domains", {"domain": "first-one.com"})).status_code == 201
        r = await a.post("/domains", {"domain": "second-one.com"})  # over the per-provider cap
        assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded", r.text
        r = await a.post("/deployments", {"name": "x", "entrypoint": "app:app", "bundle": hello("x")})
        assert r.status_code == 402 and r.json()["error"]["code"] == "category_blocked"
        assert (await a.get("/deployments")).json()["data"] == []
    await rt.close()


async def test_idle_deployments_scale_to_zero_and_wake_on_the_next_request(
    db_url: str, tmp_path: Path
) -> None:
    s = settings_for(
        db_url, provision={"edge_port": free_port(), "data_dir": str(tmp_path), "idle_seconds": 0.3}
    )
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    await rt.provision.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup()
        assert (
            await a.post("/deployments", {"name": "nap", "entrypoint": "app:app", "bundle": hello("z")})
        ).status_code == 201
        dep = (await a.get("/deployments/nap")).json()["id"]
        for _ in range(100):
            if dep not in rt.provision.runner.running:
                break
            await asyncio.sleep(0.05)
        assert dep not in rt.provision.runner.running  # scaled to zero
        assert (await edge(a, "nap.tollway.localhost")).text == "hello z /"  # woken by the request
        assert dep in rt.provision.runner.running and len(rt.provision.runner.wakes) == 1
    await rt.close()


async def test_the_reaper_flags_and_tears_down_unused_resources(db_url: str, tmp_path: Path) -> None:
    s = settings_for(
        db_url, provision={"edge_port": 0, "data_dir": str(tmp_path), "reap_after_seconds": 0.001}
    )
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup()
        assert (await a.post("/domains", {"domain": "unused-name.com"})).status_code == 201
        assert (await a.post("/domains", {"domain": "used-name.com"})).status_code == 201
        assert (
            await a.post("/domains/used-name.com/records", {"type": "A", "content": "10.0.0.1"})
        ).status_code == 201
        assert (
            await a.post("/deployments", {"name": "idle", "entrypoint": "app:app", "bundle": hello("i")})
        ).status_code == 201
        await asyncio.sleep(0.01)
        r = await http.post("/admin/provision/reap", json={}, headers=ADMIN)
        rep = r.json()
        assert sorted(f["name"] for f in rep["flagged"]) == ["idle", "unused-name.com"]
        assert rep["saved"] == 0 and rep["would_save"] == 5_000_000 + 10_440_000
        rep = (await http.post("/admin/provision/reap", json={"apply": True}, headers=ADMIN)).json()
        assert rep["saved"] == 5_000_000 + 10_440_000 and len(rep["torn_down"]) == 2
        assert [d["name"] for d in (await a.get("/domains")).json()["data"]] == ["used-name.com"]
        assert (await a.get("/deployments")).json()["data"] == []
    await rt.close()


async def test_the_edge_relays_bytes_when_handoff_is_off(db_url: str, tmp_path: Path) -> None:
    s = settings_for(
        db_url, provision={"edge_port": free_port(), "data_dir": str(tmp_path), "edge_handoff": False}
    )
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    await rt.provision.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup()
        r = await a.post("/deployments", {"name": "relay", "entrypoint": "app:app", "bundle": hello("r")})
        assert r.status_code == 201, r.text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.provision.edge_port}") as c:
            for i in range(3):  # one kept-alive connection, relayed both ways
                r = await c.get(f"/{i}", headers={"host": "relay.tollway.localhost"})
                assert r.text == f"hello r /{i}"
    await rt.close()


async def test_workers_run_under_memory_and_cpu_limits(db_url: str, tmp_path: Path) -> None:
    s = settings_for(
        db_url,
        provision={
            "edge_port": 0,
            "data_dir": str(tmp_path),
            "worker_memory_mb": 256,
            "worker_cpu_seconds": 1,
        },
    )
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup()
        before = await a.available()
        hog = zipped({"app.py": "big = bytearray(1024 * 1024 * 1024)\n" + "async def app(s, r, w): pass\n"})
        r = await a.post("/deployments", {"name": "hog", "entrypoint": "app:app", "bundle": hog})
        assert r.status_code == 422 and "MemoryError" in r.json()["error"]["message"], r.text
        spin = zipped({"app.py": "while True:\n    pass\n"})
        r = await a.post("/deployments", {"name": "spin", "entrypoint": "app:app", "bundle": spin})
        assert r.status_code == 422 and r.json()["error"]["code"] == "deploy_failed", r.text
        assert await a.available() == before
    await rt.close()


async def test_a_purchase_above_the_approval_threshold_waits_for_a_human(db_url: str, tmp_path: Path) -> None:
    s = settings_for(db_url, provision={"edge_port": 0, "data_dir": str(tmp_path)})
    rt = Runtime.build(s)
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        a = await Agent(rt, http).setup({"approval_threshold": "$5"})
        before = await a.available()
        r = await a.post("/domains", {"domain": "needs-a-human.com", "idempotency_key": "k1"})
        assert r.status_code == 202 and r.json()["status"] == "pending_approval", r.text
        auth = r.json()["authorization"]["id"]
        assert (await a.get("/domains")).json()["data"] == [] and await a.available() == before
        r = await http.post(f"/admin/approvals/{auth}/approve", json={"actor": "alice"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        r = await a.post("/domains", {"domain": "needs-a-human.com", "idempotency_key": "k1"})
        assert r.status_code == 201 and r.json()["authorization_id"] == auth, r.text
        r = await a.post("/domains/needs-a-human.com/renew", {"years": 2})  # $20.88: waits as well
        assert r.status_code == 202
        assert await a.available() == before - 10_440_000
    await rt.close()
    s = settings_for(db_url, provision={"edge_port": 0, "data_dir": str(tmp_path)})
    rt = Runtime.build(s)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as h:
        b = await Agent(rt, h).setup()
        r = await b.post("/domains", {"domain": "renewed-name.com"})
        assert r.status_code == 201
        expires = r.json()["expires_at_us"]
        r = await b.post("/domains/renewed-name.com/renew", {"years": 2})
        assert r.status_code == 200 and r.json()["charged"] == 2 * 10_440_000, r.text
        assert r.json()["expires_at_us"] == expires + 2 * 365 * 86_400 * 1_000_000
    await rt.close()


async def test_a_taken_edge_port_leaves_the_process_serving_without_an_edge(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second tollway process on one host: its edge cannot bind, it still starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = settings_for(db_url, provision={"edge_port": port, "data_dir": str(tmp_path)})
        rt = Runtime.build(s)
        try:
            await rt.provision.start()
            assert rt.provision.edge_port is None
            assert "provision edge not started" in caplog.text
        finally:
            await rt.close()
