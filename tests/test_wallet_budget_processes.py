"""An approved budget request read at once from 3 processes (each with its own
engine and ledger writer), 4 reads each: exactly one read carries the token's
secret, and exactly one token exists."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import settings_for
from processes import run_together
from tollway.runtime import Runtime

pytestmark = pytest.mark.slow

WORKERS = 3
READS = 4

WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.runtime import Runtime

cfg = json.loads(sys.argv[1])


async def main():
    rt = Runtime.build(Settings.model_validate({"database": {"url": cfg["url"]}}))
    try:
        await rt.bootstraps.verify(cfg["boot"])  # connected and warm
        print("ready", flush=True)
        sys.stdin.readline()
        reads = [rt.budget_requests.poll(cfg["boot"], cfg["rid"]) for _ in range(cfg["n"])]
        got = await asyncio.gather(*reads)
        secrets = [g["token"] for g in got if "token" in g]
        print(json.dumps({"secrets": secrets, "status": [g["status"] for g in got]}))
    finally:
        await rt.close()

asyncio.run(main())
"""


async def _setup(url: str) -> tuple[str, str, str]:
    rt = Runtime.build(settings_for(url))
    try:
        await rt.migrate()
        w = await rt.wallets.create(owner="ops")
        _, boot = await rt.bootstraps.create(w.id)
        r = await rt.budget_requests.create(boot, caps={"amount": "$1", "period": "daily"}, purpose="work")
        await rt.budget_requests.approve(r["id"])
        return w.id, boot, r["id"]
    finally:
        await rt.close()


async def _tokens(url: str, wallet_id: str) -> int:
    rt = Runtime.build(settings_for(url))
    try:
        return len(await rt.wallets.tokens(wallet_id))
    finally:
        await rt.close()


def test_three_processes_collect_the_token_once(db_url: str, tmp_path: Path) -> None:
    wallet_id, boot, rid = asyncio.run(_setup(db_url))
    cfg = {"url": db_url, "boot": boot, "rid": rid, "n": READS}
    results = run_together(WORKER, [cfg] * WORKERS, tmp_path, timeout=120)
    assert all(set(got["status"]) == {"issued"} for got in results)
    secrets = [s for got in results for s in got["secrets"]]
    assert len(secrets) == 1 and secrets[0].startswith("tw_agt_")
    assert asyncio.run(_tokens(db_url, wallet_id)) == 1
