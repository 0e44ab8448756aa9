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


async def authorize_race(db_url: str, tmp_path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    srv = await servers(db_url, tmp_path, 3)
    clients = [httpx.AsyncClient(base_url=s.url, headers=ADMIN, timeout=30) for s in srv]
    try:
        c = clients[0]
        cus = (await c.post("/admin/customers", json={"name": "agent owner"})).json()
        fund = {"debit_account_id": "sys_funding", "credit_account_id": cus["account_id"], "amount": 10**8}
        assert (await c.post("/admin/ledger/transfers", json=fund)).status_code == 200
        w = (await c.post("/admin/wallets", json={"customer_id": cus["id"]})).json()
        assert (await c.post(f"/admin/wallets/{w['id']}/topup", json={"amount": "$10"})).status_code == 200
        token = (await c.post(f"/admin/wallets/{w['id']}/tokens", json={"name": "a"})).json()["token"]
        agent = {"Authorization": f"Bearer {token}"}
        auths: list[Any] = []
        for n in range(8):
            body = {
                "amount": 1000,
                "payee": "api.example.com",
                "category": "api_access",
                "idempotency_key": f"k{n}",
            }
            rs = await asyncio.gather(
                *(cl.post("/v1/wallet/authorize", json=body, headers=agent) for cl in clients)
            )
            assert {r.status_code for r in rs} == {200}, [r.text for r in rs]
            auths.append([r.json() for r in rs])
        # Every id answered is the recorded one, and capturing it works anywhere.
        captures: list[Any] = []
        for answers in auths:
            aid = answers[0]["id"]
            assert {a["id"] for a in answers} == {aid}, answers
            rs = await asyncio.gather(
                *(
                    cl.post(f"/v1/wallet/authorizations/{aid}/capture", json={}, headers=agent)
                    for cl in clients
                )
            )
            captures.append([(r.status_code, r.json()) for r in rs])
        audit = (await c.get(f"/admin/wallets/{w['id']}/audit", params={"limit": 1000})).json()["data"]
        acct = (await c.get(f"/admin/ledger/accounts/{w['account_id']}")).json()
        assert (acct["debits_posted"], acct["debits_pending"]) == (8 * 1000, 0)
        return auths, captures, audit
    finally:
        for cl in clients:
            await cl.aclose()
        for s in srv:
            s.kill()


def test_one_authorize_key_across_three_processes_is_one_authorization(db_url: str, tmp_path: Path) -> None:
    """One idempotency_key sent to 3 processes at once: one authorization,
    the same id everywhere, captured once, audited once (decision and capture)."""
    _, captures, audit = asyncio.run(authorize_race(db_url, tmp_path))
    for per in captures:
        ok = [b for s, b in per if s == 200]
        assert ok and all(b["status"] == "captured" for b in ok), per
        assert all(b["error"]["code"] == "authorization_not_open" for s, b in per if s != 200), per
    by_event: dict[str, int] = {}
    for row in audit:
        by_event[row["event"]] = by_event.get(row["event"], 0) + 1
    assert by_event.get("authorization") == 8 and by_event.get("capture") == 8, by_event
