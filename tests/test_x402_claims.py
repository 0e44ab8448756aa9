"""One payment, one execution: the paywall claims a payment's authorization
before the origin runs, so one payment header sent many times at once (to one
process or several) runs the origin once and settles once; a failed origin
gives the payment back; a spent one never runs anything again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN, ADMIN_TOKEN, settings_for
from threaded import free_port
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.x402.claims import PAYMENT_IN_USE, Claims
from x402_gateway_support import Origin, funded, header, required, revenue
from x402_helpers import PAY_TO, Payer

PRICE = 1000
NONCE_USED = "invalid_exact_evm_nonce_already_used"


@pytest.fixture
async def gw(db_url: str, origin: tuple[Origin, str]) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    rules = [
        {"name": "api", "methods": ["GET", "POST"], "path": "/api/*", "origin": origin[1], "price": "$0.001"}
    ]
    rt = Runtime.build(settings_for(db_url, x402={"pay_to": PAY_TO, "rules": rules}))
    transport = httpx.ASGITransport(app=create_app(rt=rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as c:
        yield c, rt
    await rt.close()


def reason(r: httpx.Response) -> str:
    out: str = required(r)["error"]
    return out


async def test_a_claim_is_exclusive_released_by_its_owner_and_spent_forever(rt: Runtime) -> None:
    claims = Claims(rt.engine, rt.ledger, rt.clock)
    key, payer = "x402:test:0xabc:0x01", "0xPayer"
    token = await claims.claim(key, payer)
    for _ in range(2):
        with pytest.raises(Exception, match="right now") as e:
            await claims.claim(key, payer)
        assert getattr(e.value, "reason", None) == PAYMENT_IN_USE
    await claims.release(key, "someone-else")  # fenced: not theirs to release
    with pytest.raises(Exception, match="right now"):
        await claims.claim(key, payer)
    await claims.release(key, token)
    token = await claims.claim(key, payer)  # given back: usable again
    await claims.spend(key, token)
    await rt.ledger.riders_committed()  # the spend rides with the next ledger batch
    await claims.release(key, token)  # a spent claim is never released
    late = Claims(rt.engine, rt.ledger, rt.clock, lease_s=-1)
    for c in (claims, late):
        with pytest.raises(Exception) as e:
            await c.claim(key, payer)
        assert getattr(e.value, "reason", None) == NONCE_USED


async def test_a_claim_whose_process_died_expires_and_its_owner_cannot_release_the_next(rt: Runtime) -> None:
    dead = Claims(rt.engine, rt.ledger, rt.clock, lease_s=-1)  # its lease is over at once
    key = "x402:test:0xabc:0x02"
    old = await dead.claim(key, "0xPayer")
    live = Claims(rt.engine, rt.ledger, rt.clock)
    new = await live.claim(key, "0xPayer")  # taken over
    await dead.release(key, old)  # the dead owner's token no longer holds it
    with pytest.raises(Exception, match="right now"):
        await live.claim(key, "0xPayer")
    await live.release(key, new)


async def test_one_payment_sent_ten_times_at_once_runs_the_origin_once(
    gw: Any, origin: tuple[Origin, str]
) -> None:
    c, rt = gw
    o, _ = origin
    o.delay_s = 0.3  # all ten are verified while the first is at the origin
    p = await funded(rt)
    accept = required(await c.get("/api/x"))["accepts"][0]
    h = {"payment-signature": header(p.v2(accept))}
    rs = await asyncio.gather(*(c.get("/api/x", headers=h) for _ in range(10)))
    assert sorted(r.status_code for r in rs) == [200] + [402] * 9
    assert {reason(r) for r in rs if r.status_code == 402} <= {PAYMENT_IN_USE, NONCE_USED}
    assert len(o.calls) == 1
    assert await revenue(rt) == PRICE and await rt.devnet.balance(p.address) == 10_000 - PRICE
    again = await c.get("/api/x", headers=h)  # spent: never again
    assert again.status_code == 402 and reason(again) == NONCE_USED and len(o.calls) == 1


async def test_ten_payments_against_one_balance_run_the_origin_only_as_often_as_it_pays(
    gw: Any, origin: tuple[Origin, str]
) -> None:
    """A payer whose balance covers 2 payments signs 10 (different nonces) and
    sends them at once: each passes verification alone, but the claims hold the
    balance while the origin works, so the origin runs twice and both settle."""
    c, rt = gw
    o, _ = origin
    o.delay_s = 0.3
    p = await funded(rt, 2 * PRICE)
    accept = required(await c.get("/api/x"))["accepts"][0]
    headers = [{"payment-signature": header(p.v2(accept))} for _ in range(10)]
    rs = await asyncio.gather(*(c.get("/api/x", headers=h) for h in headers))
    assert sorted(r.status_code for r in rs) == [200] * 2 + [402] * 8
    assert {reason(r) for r in rs if r.status_code == 402} == {"insufficient_funds"}
    assert len(o.calls) == 2
    assert await revenue(rt) == 2 * PRICE and await rt.devnet.balance(p.address) == 0


async def test_a_failed_origin_gives_the_payment_back_for_a_retry(
    gw: Any, origin: tuple[Origin, str]
) -> None:
    c, rt = gw
    o, _ = origin
    p = await funded(rt)
    accept = required(await c.get("/api/x"))["accepts"][0]
    h = {"payment-signature": header(p.v2(accept))}
    o.fail_next = 1
    r = await c.get("/api/x", headers=h)
    assert r.status_code == 503 and await revenue(rt) == 0
    r = await c.get("/api/x", headers=h)  # the same payment, retried
    assert r.status_code == 200 and "payment-response" in r.headers
    assert len(o.calls) == 2 and await revenue(rt) == PRICE


async def test_an_unreachable_origin_gives_the_payment_back(db_url: str, origin: tuple[Origin, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    rules = [{"name": "down", "path": "/down", "origin": dead, "price": "$0.001"}]
    rules.append({"name": "up", "path": "/up", "origin": origin[1], "price": "$0.001"})
    rt = Runtime.build(settings_for(db_url, x402={"pay_to": PAY_TO, "rules": rules}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
    ) as c:
        p = await funded(rt)
        accept = required(await c.get("/down"))["accepts"][0]
        h = {"payment-signature": header(p.v2(accept))}
        r = await c.get("/down", headers=h)
        assert r.status_code == 502 and r.json()["error"]["code"] == "origin_unreachable"
        assert (await c.get("/up", headers=h)).status_code == 200  # same amount and payTo: still good
    await rt.close()


async def test_one_payment_for_an_ai_route_runs_one_generation(db_url: str) -> None:
    from fake_upstream import FakeUpstream, model

    with FakeUpstream() as up:
        up.delay_s = 0.3
        rule = {"name": "ai", "methods": ["POST"], "path": "/v1/chat/completions", "origin": "self"}
        rule["price_by"] = "ai_max_cost"
        settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]}, models=[model("m", up.url)])
        rt = Runtime.build(settings)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
            accept = required(await c.post("/v1/chat/completions", json=body))["accepts"][0]
            p = await funded(rt, 1_000_000)
            h = {"payment-signature": header(p.v2(accept))}
            rs = await asyncio.gather(
                *(c.post("/v1/chat/completions", json=body, headers=h) for _ in range(6))
            )
            assert sorted(r.status_code for r in rs) == [200] + [402] * 5
            assert up.calls == 1 and await revenue(rt) == int(accept["amount"])
        finally:
            await c.aclose()
            await rt.close()


# ------------------------------------------------------------ two processes


def _serve(cfg: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["TOLLWAY_DATABASE__MIGRATE_ON_START"] = "false"
    cmd = [sys.executable, "-m", "tollway.cli.main", "--config", str(cfg), "serve", "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)


@pytest.mark.slow
async def test_one_payment_sent_to_two_processes_at_once_runs_the_origin_once(
    tmp_path: Path, db_url: str, origin: tuple[Origin, str]
) -> None:
    """Two ``tollway serve`` processes on one database (SQLite, or PostgreSQL
    when TOLLWAY_TEST_POSTGRES_URL is set), five copies of one payment each."""
    o, url = origin
    o.delay_s = 0.5
    cfg = tmp_path / "tollway.toml"
    cfg.write_text(
        f'[database]\nurl = "{db_url}"\n\n[admin]\ntoken = "{ADMIN_TOKEN}"\n\n'
        f'[x402]\npay_to = "{PAY_TO}"\n\n[[x402.rules]]\nname = "api"\npath = "/api/*"\n'
        f'origin = "{url}"\nprice = "$0.001"\n'
    )
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(2):
            procs.append(await asyncio.to_thread(_serve, cfg, tmp_path / f"serve-{i}.log"))
        bases = [b for _, b in procs]
        p = Payer()
        async with httpx.AsyncClient(timeout=60) as http:
            fund = {"address": p.address, "amount": "$0.01"}
            assert (
                await http.post(bases[0] + "/admin/x402/devnet/fund", json=fund, headers=ADMIN)
            ).status_code == 200
            accept = required(await http.get(bases[0] + "/api/x"))["accepts"][0]
            h = {"payment-signature": header(p.v2(accept))}
            rs = await asyncio.gather(*(http.get(bases[i % 2] + "/api/x", headers=h) for i in range(10)))
            assert sorted(r.status_code for r in rs) == [200] + [402] * 9
            assert {reason(r) for r in rs if r.status_code == 402} <= {PAYMENT_IN_USE, NONCE_USED}
            revenue_ = (await http.get(bases[1] + "/admin/x402/revenue", headers=ADMIN)).json()
        assert len(o.calls) == 1 and (revenue_["payments"], revenue_["amount"]) == (1, PRICE)
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(30)
