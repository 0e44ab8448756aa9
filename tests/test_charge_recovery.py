"""Served-but-uncharged work is recovered: a long call checkpoints what it has
produced, and when its process dies mid-call the checkpoint is charged.

In process (both backends): checkpoints, recovery of a dead process's hold,
never a second charge for a hold its caller settled, never recovering a hold
this process still serves. End to end (SQLite and PostgreSQL): a stream from
a slow upstream, the server killed with ``kill -9`` mid-stream, restarted:
the tokens the client received up to the last checkpoint are charged, and
nothing is left reserved."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import ADMIN, ADMIN_TOKEN
from fake_upstream import FakeUpstream
from test_charge import payer, state, usage_rows
from test_durability import Server
from tollway.charge.recovery import Recovery
from tollway.core.schema import charge_progress
from tollway.runtime import Runtime


def recovery(rt: Runtime) -> Recovery:
    return Recovery(rt.engine, rt.ledger, rt.charger, rt.clock, interval_s=0.0)


async def rows(rt: Runtime) -> list[dict[str, object]]:
    async with rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(charge_progress))).mappings()]


async def test_a_dead_process_s_checkpoint_is_charged_once(rt: Runtime) -> None:
    p = await payer(rt)
    rec = recovery(rt)
    h = rt.charger.hold(p, 300, meter="neurons")
    await h.reserve()
    h.progress = lambda: (100, 40, {"model": "m"})
    assert await rec.checkpoint() == 1
    h.progress = lambda: (120, 42, {"model": "m"})
    assert await rec.checkpoint() == 1  # the same row, updated
    [row] = await rows(rt)
    assert (row["amount"], row["quantity"]) == (120, 42)

    assert await rec.recover(stale_s=0) == 0  # this process still serves it: never recovered
    rt.charger.live.clear()  # the process "died": nobody will settle this hold
    assert await rec.recover(stale_s=0) == 1
    assert await state(rt, p) == (880, 0, 120)  # taken: the checkpoint; released: the rest
    [u] = await usage_rows(rt)
    assert (u["quantity"], u["amount"]) == (42, 120)
    assert json.loads(str(u["metadata"]))["recovered"] is True
    assert await rows(rt) == [] and await rec.recover(stale_s=0) == 0  # once


async def test_a_hold_its_caller_settled_is_never_charged_again(rt: Runtime) -> None:
    p = await payer(rt)
    rec = recovery(rt)
    h = rt.charger.hold(p, 300, meter="neurons")
    await h.reserve()
    h.progress = lambda: (100, 40, {})
    assert await rec.checkpoint() == 1
    await h.settle(150, quantity=60)  # the caller finished after the checkpoint
    assert await rec.recover(stale_s=0) == 0  # its legs are resolved: the row is just dropped
    assert await state(rt, p) == (850, 0, 150)
    assert await rows(rt) == []


async def test_a_checkpoint_row_is_dropped_once_its_hold_settles(rt: Runtime) -> None:
    p = await payer(rt)
    rec = recovery(rt)
    h = rt.charger.hold(p, 300, meter="neurons")
    await h.reserve()
    h.progress = lambda: (10, 1, {})
    await rec.checkpoint()
    await h.release()
    assert rt.charger.live == {}
    await rec.checkpoint()
    assert await rows(rt) == []


async def test_short_or_unprogressed_holds_are_not_checkpointed(rt: Runtime) -> None:
    p = await payer(rt)
    rec = Recovery(rt.engine, rt.ledger, rt.charger, rt.clock, interval_s=3600)
    h = rt.charger.hold(p, 300, meter="neurons")
    await h.reserve()
    h.progress = lambda: (10, 1, {})
    assert await rec.checkpoint() == 0  # younger than the interval
    h2 = rt.charger.hold(p, 300, meter="neurons")
    await h2.reserve()
    assert await recovery(rt).checkpoint() == 1  # only h has a progress function
    await h.release()
    await h2.release()


# ------------------------------------------------------------ end to end


def config(db_url: str, upstream: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
log_level = "warning"
[database]
url = "{db_url}"
[admin]
token = "{ADMIN_TOKEN}"
[ledger]
progress_seconds = 0.3
[inference]
free_neurons_per_day = 0
usd_per_1000_neurons = "$1"
hold_timeout_seconds = 600
[provision]
edge_port = 0
[[models]]
name = "up"
task = "chat"
backend = "openai"
base_url = "{upstream}"
neurons_per_m_input = 2457
neurons_per_m_output = 18252
"""


@pytest.mark.slow
def test_kill_9_mid_stream_charges_what_was_checkpointed(db_url: str, tmp_path: Path) -> None:
    asyncio.run(_kill_mid_stream(db_url, tmp_path))


async def _kill_mid_stream(db_url: str, tmp_path: Path) -> None:
    with FakeUpstream() as up:
        up.chunk_delay_s = 0.4  # 6 words, then the end: ~3.6 s of stream
        cfg = tmp_path / "tollway.toml"
        cfg.write_text(config(db_url, up.url))
        server = Server(cfg, tmp_path / "server.log")
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as c:
                cus = (await c.post("/admin/customers", json={"name": "streamer"})).json()
                fund = {"debit_account_id": "sys_funding", "credit_account_id": cus["account_id"]}
                await c.post("/admin/ledger/transfers", json={**fund, "amount": 10**9})
                key = (await c.post("/admin/keys", json={"customer_id": cus["id"]})).json()["key"]
            body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            got = 0
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=30) as c,
                c.stream(
                    "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                ) as r,
            ):
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"content"' in line:
                        got += 1
                    if got == 4:  # ~1.6 s in: several checkpoints were written
                        server.kill()
                        break
            await server.start()  # the new process recovers what the dead one left
            async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as c:
                for _ in range(100):
                    a = (await c.get(f"/admin/ledger/accounts/{cus['account_id']}")).json()
                    if a["debits_pending"] == 0:
                        break
                    await asyncio.sleep(0.1)
                assert a["debits_pending"] == 0, a  # recovered long before the hold's 600 s timeout
                charged = a["debits_posted"]
                assert charged > 0, "the delivered tokens were not charged"
                print(f"\nrecovered after kill -9 mid-stream: {charged} micro-USD for {got} chunks received")
        finally:
            server.kill()
