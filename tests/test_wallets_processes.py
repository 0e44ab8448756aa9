"""Zero overspend across processes: 200 concurrent authorizations against a
$10 daily limit, sent from 4 processes (each with its own ledger writer and
engine) on one database, then captured: at most $10.00 is captured in all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import settings_for
from processes import run_together
from tollway.runtime import Runtime

pytestmark = pytest.mark.slow

WORKERS = 4
PER_WORKER = 50
AMOUNT = 370_000  # $0.37: 27 fit in $10 ($9.99), a 28th would not

WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.runtime import Runtime

cfg = json.loads(sys.argv[1])


async def main():
    rt = Runtime.build(Settings.model_validate({"database": {"url": cfg["url"]}}))
    try:
        await rt.wallets.verify(cfg["token"])  # connected and warm
        print("ready", flush=True)
        sys.stdin.readline()
        async def one(i):
            d = await rt.authorizer.authorize(
                cfg["token"], amount=cfg["amount"], payee="api.example.com", category="api_access",
                idempotency_key=f"{cfg['worker']}-{i}",
            )
            if d.status == "approved":
                d = await rt.authorizer.capture(d.id, token_id=d.token_id)
                return d.captured
            return 0
        got = await asyncio.gather(*[one(i) for i in range(cfg["n"])])
        print(json.dumps({"captured": [g for g in got if g]}), flush=True)
    finally:
        await rt.close()

asyncio.run(main())
"""


async def _setup(url: str) -> tuple[str, str]:
    rt = Runtime.build(settings_for(url))
    try:
        await rt.migrate()
        w = await rt.wallets.create(
            owner="ops", policy={"spending_limits": [{"amount": "$10", "interval": "daily"}]}
        )
        await rt.wallets.topup(w.id, "$100")
        _, secret = await rt.wallets.grant(w.id, name="agent")
        return w.id, secret
    finally:
        await rt.close()


async def _final(url: str, wallet_id: str) -> tuple[int, int, int]:
    rt = Runtime.build(settings_for(url))
    try:
        w = await rt.wallets.get(wallet_id)
        a = await rt.ledger.get_account(w.account_id)
        total = sum(x.balance for x in await rt.ledger.accounts())
        return a.debits_posted, a.debits_pending, total
    finally:
        await rt.close()


def test_four_processes_cannot_overspend_a_daily_limit(db_url: str, tmp_path: Path) -> None:
    wallet_id, token = asyncio.run(_setup(db_url))
    cfgs: list[dict[str, Any]] = [
        {"url": db_url, "token": token, "amount": AMOUNT, "n": PER_WORKER, "worker": i}
        for i in range(WORKERS)
    ]
    captured: list[int] = [c for out in run_together(WORKER, cfgs, tmp_path) for c in out["captured"]]
    assert sum(captured) <= 10_000_000
    assert len(captured) == 27  # no lost capacity either: every authorization that fit was approved
    posted, pending, total = asyncio.run(_final(db_url, wallet_id))
    assert posted == sum(captured) and pending == 0 and total == 0
