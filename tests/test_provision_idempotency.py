"""Provisioning purchases are idempotent under concurrency, on every backend:
concurrent calls with one idempotency key do the purchase once and all get
its answer; the key with another request is a 409 that changes nothing; a
failed purchase answers the same failure to a retry. Two runtimes on one
database (no shared memory: the claim row is all they share) agree too, and
so do two processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import err
from processes import run_together
from provision_support import CRASHING, Agent, hello, provisioned

pytestmark = pytest.mark.slow

ZONE = "idem-shop.com"
TXT = {"type": "TXT", "name": "_verify", "content": "token=abc", "idempotency_key": "txt-1"}


@pytest.fixture
async def agent(db_url: str, tmp_path: Path) -> AsyncIterator[Agent]:
    async with provisioned(db_url, tmp_path / "prov") as a:
        r = await a.post("/domains", {"domain": ZONE})
        assert r.status_code == 201, r.text
        yield a


async def records(a: Agent) -> list[dict[str, Any]]:
    r = await a.get(f"/domains/{ZONE}/records")
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["data"]
    return out


def same(rs: list[httpx.Response], status: int) -> dict[str, Any]:
    assert {r.status_code for r in rs} == {status}, [r.text for r in rs]
    first: dict[str, Any] = rs[0].json()
    assert all(r.json() == first for r in rs), [r.text for r in rs]
    return first


async def test_six_concurrent_txt_records_with_one_key_make_one_record_and_one_charge(agent: Agent) -> None:
    before = await agent.available()
    rs = await asyncio.gather(*[agent.post(f"/domains/{ZONE}/records", TXT) for _ in range(6)])
    rec = same(list(rs), 201)
    assert rec["charged"] == 1000
    assert [r["id"] for r in await records(agent)] == [rec["id"]]
    assert before - await agent.available() == 1000
    again = await agent.post(f"/domains/{ZONE}/records", TXT)  # a later retry: the same answer
    assert again.status_code == 201 and again.json() == rec


async def test_four_concurrent_deploys_with_one_key_deploy_once(agent: Agent) -> None:
    before = await agent.available()
    body = {"name": "idem-app", "entrypoint": "app:app", "bundle": hello("one"), "idempotency_key": "dep-1"}
    rs = await asyncio.gather(*[agent.post("/deployments", body) for _ in range(4)])
    out = same(list(rs), 201)
    assert out["deployed_version"] == 1 and out["live_version"] == 1 and out["charged"] == 10_000
    dep = (await agent.get("/deployments/idem-app")).json()
    assert [(v["version"], v["status"]) for v in dep["versions"]] == [(1, "live")]
    assert before - await agent.available() == 10_000


async def test_the_key_with_another_request_is_409_and_changes_nothing(agent: Agent) -> None:
    r = await agent.post(f"/domains/{ZONE}/records", TXT)
    assert r.status_code == 201, r.text
    before, recs = await agent.available(), await records(agent)
    for other in (
        {**TXT, "content": "token=other"},
        {**TXT, "name": "_other"},
        {**TXT, "ttl": 300},
        {"type": "A", "name": "www", "content": "192.0.2.1", "idempotency_key": "txt-1"},
    ):
        err(
            await agent.post(f"/domains/{ZONE}/records", other),
            409,
            "idempotency_key_reused",
            "idempotency_key",
        )
    # the same key on another kind of purchase, or another bundle
    err(
        await agent.post(
            "/deployments",
            {"name": "idem-app", "entrypoint": "app:app", "bundle": hello("x"), "idempotency_key": "txt-1"},
        ),
        409,
        "idempotency_key_reused",
    )
    body = {"name": "idem-app", "entrypoint": "app:app", "bundle": hello("a"), "idempotency_key": "dep-a"}
    assert (await agent.post("/deployments", body)).status_code == 201
    spent = before - await agent.available()
    err(await agent.post("/deployments", {**body, "bundle": hello("b")}), 409, "idempotency_key_reused")
    err(await agent.post("/deployments", {**body, "entrypoint": "app:other"}), 409, "idempotency_key_reused")
    assert await records(agent) == recs and before - await agent.available() == spent == 10_000
    dep = (await agent.get("/deployments/idem-app")).json()
    assert [v["version"] for v in dep["versions"]] == [1]


async def test_a_failed_deploy_answers_its_failure_to_a_retry_and_charges_nothing(agent: Agent) -> None:
    before = await agent.available()
    body = {"name": "idem-crash", "entrypoint": "app:app", "bundle": CRASHING, "idempotency_key": "crash-1"}
    rs = await asyncio.gather(*[agent.post("/deployments", body) for _ in range(3)])
    for r in rs:
        err(r, 422, "deploy_failed", "bundle")
    assert len({r.text for r in rs}) == 1
    retry = await agent.post("/deployments", body)
    assert retry.status_code == 422 and retry.text == rs[0].text
    dep = (await agent.get("/deployments/idem-crash")).json()
    assert [v["status"] for v in dep["versions"]] == ["failed"]
    assert await agent.available() == before


async def test_two_runtimes_on_one_database_buy_once_per_key(db_url: str, tmp_path: Path) -> None:
    """No shared memory between them (two authorizers, two claim waiters): only the database."""
    async with provisioned(db_url, tmp_path / "a", edge=False) as a:
        r = await a.post("/domains", {"domain": ZONE})
        assert r.status_code == 201, r.text
        async with provisioned(db_url, tmp_path / "b", edge=False) as b:
            b.wallet, b.token = a.wallet, a.token  # the same agent, served by the other runtime
            before = await a.available()
            calls = [(a if i % 2 else b).post(f"/domains/{ZONE}/records", TXT) for i in range(6)]
            rec = same(list(await asyncio.gather(*calls)), 201)
            assert [x["id"] for x in await records(a)] == [rec["id"]]
            assert before - await a.available() == 1000
            err(
                await b.post(f"/domains/{ZONE}/records", {**TXT, "content": "other"}),
                409,
                "idempotency_key_reused",
            )


WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.runtime import Runtime

cfg = json.loads(sys.argv[1])


async def main():
    s = {"database": {"url": cfg["url"]}, "provision": {"edge_port": 0, "data_dir": cfg["dir"]}}
    rt = Runtime.build(Settings.model_validate(s))
    try:
        await rt.wallets.verify(cfg["token"])  # connected and warm
        print("ready", flush=True)
        sys.stdin.readline()

        async def one():
            try:
                d = rt.provision.domains
                return await d.create_record(cfg["token"], cfg["zone"], cfg["body"], "txt-1")
            except Exception as e:
                return {"raised": repr(e)}

        print(json.dumps(await asyncio.gather(*[one() for _ in range(cfg["n"])])), flush=True)
    finally:
        await rt.close()

asyncio.run(main())
"""


def test_two_processes_buy_once_per_key(db_url: str, tmp_path: Path) -> None:
    """Each process with its own runtime, ledger writer and engine, 3 calls each, one key."""

    async def setup() -> tuple[dict[str, Any], str, int]:
        async with provisioned(db_url, tmp_path / "prov", edge=False) as a:
            assert (await a.post("/domains", {"domain": ZONE})).status_code == 201
            return a.wallet, a.token, await a.available()

    wallet, token, before = asyncio.run(setup())
    body = {k: v for k, v in TXT.items() if k != "idempotency_key"}
    cfg = {"url": db_url, "dir": str(tmp_path / "prov"), "token": token, "zone": ZONE, "body": body, "n": 3}
    got: list[dict[str, Any]] = [g for out in run_together(WORKER, [cfg, cfg], tmp_path, 120) for g in out]
    assert len(got) == 6 and all(g == got[0] for g in got), got
    assert got[0]["charged"] == 1000 and got[0]["content"] == "token=abc"

    async def after() -> tuple[list[str], int]:
        async with provisioned(db_url, tmp_path / "prov", edge=False) as a:
            a.wallet = wallet  # the first agent's, read through this runtime
            recs = [r.id for r in await a.rt.provision.domains.records(ZONE)]
            return recs, await a.available()

    recs, left = asyncio.run(after())
    assert recs == [got[0]["id"]] and before - left == 1000
