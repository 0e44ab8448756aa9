"""One idempotency key is one effect across any number of processes: real
``tollway serve`` processes on one database, hit at once with the same key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN, ADMIN_TOKEN
from test_durability import Server

pytestmark = pytest.mark.slow
ROUNDS = 20  # reservations, each posted 50 times at once under one key


def write_config(path: Path, db_url: str) -> Path:
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nlog_level = "warning"\n[database]\nurl = "{db_url}"\n'
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n[provision]\nedge_port = 0\n'
    )
    return path


async def servers(db_url: str, tmp_path: Path, n: int) -> list[Server]:
    cfg = write_config(tmp_path / "tollway.toml", db_url)
    out = [Server(cfg, tmp_path / f"server{i}.log") for i in range(n)]
    for s in out:
        await s.start()
    return out


async def post_race(db_url: str, tmp_path: Path) -> list[tuple[int, Any]]:
    srv = await servers(db_url, tmp_path, 2)
    try:
        clients = [httpx.AsyncClient(base_url=s.url, headers=ADMIN, timeout=30) for s in srv]
        c = clients[0]
        r = await c.post("/admin/ledger/accounts", json={"kind": "customer", "name": "race"})
        acct = r.json()["id"]
        fund = {"debit_account_id": "sys_funding", "credit_account_id": acct, "amount": 1_000_000}
        assert (await c.post("/admin/ledger/transfers", json=fund)).status_code == 200
        hold = {"debit_account_id": acct, "credit_account_id": "sys_revenue", "amount": 500, "pending": True}
        got: list[tuple[int, Any]] = []
        for round_ in range(ROUNDS):
            pending = (await c.post("/admin/ledger/transfers", json=hold)).json()["id"]

            async def post(i: int, pending: str = pending, key: str = f"post-{round_}") -> tuple[int, Any]:
                r = await clients[i % 2].post(
                    f"/admin/ledger/transfers/{pending}/post",
                    json={"amount": 300},
                    headers={"Idempotency-Key": key},
                )
                return r.status_code, r.json()

            answers = await asyncio.gather(*(post(i) for i in range(50)))
            assert len({b.get("id") for _, b in answers}) == 1, answers
            got += answers
        a = (await c.get(f"/admin/ledger/accounts/{acct}")).json()
        assert (a["debits_posted"], a["debits_pending"]) == (300 * ROUNDS, 0)
        for cl in clients:
            await cl.aclose()
        return got
    finally:
        for s in srv:
            s.kill()


def test_one_post_key_across_two_processes_is_one_200_everywhere(db_url: str, tmp_path: Path) -> None:
    got = asyncio.run(post_race(db_url, tmp_path))
    assert {s for s, _ in got} == {200}, [b for s, b in got if s != 200][:3]
