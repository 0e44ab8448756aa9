"""The billing tick across processes: four processes tick together, many
times, on one database; hosting is billed once for the interval and the
domain renewed once for its term (run on PostgreSQL too)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import settings_for
from processes import run_together
from tollway.core.schema import provision_domains as D
from tollway.core.schema import wallet_authorizations as A
from tollway.runtime import Runtime

pytestmark = pytest.mark.slow

PROCESSES = 4
TICKS = 8

WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.runtime import Runtime

cfg = json.loads(sys.argv[1])


async def main():
    s = Settings.model_validate({"database": {"url": cfg["url"]}, "provision": cfg["provision"]})
    rt = Runtime.build(s)
    try:
        await rt.wallets.get(cfg["wallet"])  # connected and warm
        print("ready", flush=True)
        sys.stdin.readline()
        charged = renewed = 0
        for _ in range(cfg["ticks"]):
            r = await rt.provision.tick()
            charged += sum(c["amount"] for c in r["charged"])
            renewed += len(r["renewed"])
        print(json.dumps({"charged": charged, "renewed": renewed}), flush=True)
    finally:
        await rt.close()

asyncio.run(main())
"""


def _provision(tmp_path: Path) -> dict[str, Any]:
    return {
        "edge_port": 0,
        "data_dir": str(tmp_path / "prov"),
        "hosting_price_per_worker_second": "2.5",
        "billing_tick_seconds": 86_400,
    }


async def _setup(url: str, tmp_path: Path) -> tuple[str, str, int]:
    from recurring_support import World

    rt = Runtime.build(settings_for(url, provision=_provision(tmp_path)))
    try:
        await rt.migrate()
        w = World(rt, rt.clock)  # type: ignore[arg-type]
        await w.wallet(50_000_000)
        dep = await w.deployment("shop")
        dom = await w.domain("renew.test", 3, renew=1_000_000)
        await rt.provision.recurring.record({dep: (1_000_000_000, 0)})  # 1000 s at 2.5: 2500
        async with rt.engine.connect() as conn:
            exp = (await conn.execute(select(D.c.expires_at_us).where(D.c.id == dom))).scalar()
        assert exp is not None
        return w.wallet_id, dom, exp
    finally:
        await rt.close()


async def _final(url: str, wallet_id: str, dom: str) -> tuple[list[Any], int, int]:
    rt = Runtime.build(settings_for(url))
    try:
        async with rt.engine.connect() as conn:
            auths = (await conn.execute(select(A).where(A.c.wallet_id == wallet_id))).all()
            exp = (await conn.execute(select(D.c.expires_at_us).where(D.c.id == dom))).scalar()
        w = await rt.wallets.get(wallet_id)
        _, avail = await rt.wallets.balance(w)
        return list(auths), int(exp or 0), avail
    finally:
        await rt.close()


def test_processes_ticking_together_bill_once(db_url: str, tmp_path: Path) -> None:
    wallet_id, dom, expires = asyncio.run(_setup(db_url, tmp_path))
    cfg = {"url": db_url, "provision": _provision(tmp_path), "wallet": wallet_id, "ticks": TICKS}
    outs = run_together(WORKER, [cfg] * PROCESSES, tmp_path)
    assert sum(o["charged"] for o in outs) == 2_500
    assert sum(o["renewed"] for o in outs) >= 1  # a process that found it captured reports it too
    auths, new_expiry, available = asyncio.run(_final(db_url, wallet_id, dom))
    captured = sorted((a.category, a.captured) for a in auths if a.status == "captured")
    assert captured == [("domains", 1_000_000), ("hosting", 2_500)]
    assert new_expiry == expires + 365 * 86_400_000_000
    assert available == 50_000_000 - 1_000_000 - 2_500
