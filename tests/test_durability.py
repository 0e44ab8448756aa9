"""Durability across ``kill -9``: what the server acknowledged survives a crash.

The real server runs as a subprocess (``python -m tollway.cli.main serve``;
SQLite with ``sqlite_synchronous = "FULL"``, or PostgreSQL).  Many concurrent
HTTP clients send single-phase transfers and reserve-then-post pairs, each
with its own ``Idempotency-Key``; once a few hundred are acknowledged the
server gets SIGKILL while requests are still in flight.  It is restarted on the
same database and checked.

Invariants it tries to break:

- every acknowledged transfer (HTTP 200 with an id) exists after the crash,
  unchanged;
- balances agree with the transfers that committed: the ledger sums to zero
  (posted and pending), and the customer's balance is its funding minus the
  sum of its committed debits, its debits_pending the sum of its open
  reservations;
- re-sending a request whose answer was lost, with the same key and body,
  returns the committed transfer if it had committed, or creates it now —
  once: no key ever has two transfers, and a second re-send changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ADMIN, ADMIN_TOKEN

pytestmark = pytest.mark.slow

FUNDS = 10**12  # never the limit: every re-sent request must be able to commit
CLIENTS = 48
KILL_AFTER = 400  # acknowledged requests before the SIGKILL
REVENUE = "sys_revenue"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``tollway serve`` in a subprocess, on a fresh port each start."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
        cmd = [sys.executable, "-X", "faulthandler", "-m", "tollway.cli.main", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "serve", "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self.proc

    async def start(self) -> None:
        """Spawn and wait until /healthz answers 200."""
        proc = self.spawn()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url) as c:
            while True:
                assert proc.poll() is None, f"server exited:\n{self.tail()}"
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get("/healthz")).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"server not ready:\n{self.tail()}"
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def running(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    try:
        await server.start()
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, headers=ADMIN, limits=limits, timeout=30) as c:
            yield c
    finally:
        server.kill()


@dataclass
class Call:
    """One POST with its Idempotency-Key, and what came back (if anything)."""

    key: str
    path: str
    body: dict[str, Any]
    status: int | None = None
    response: dict[str, Any] | None = None

    @property
    def acked(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    customer: str
    calls: list[Call] = field(default_factory=list)
    killed: bool = False
    acked: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)  # KILL_AFTER acknowledged
    in_flight: int = 0
    in_flight_at_kill: int = 0
    failures: list[str] = field(default_factory=list)


async def send(client: httpx.AsyncClient, call: Call) -> httpx.Response:
    return await client.post(call.path, json=call.body, headers={"Idempotency-Key": call.key})


async def client_loop(client: httpx.AsyncClient, load: Load, seed: int) -> None:
    """Send transfers until the server dies under us."""
    rng = random.Random(seed)

    async def do(call: Call) -> bool:
        load.calls.append(call)
        load.in_flight += 1
        try:
            r = await send(client, call)
        except httpx.TransportError as e:
            if not load.killed:
                load.failures.append(f"{call.path}: {e!r}")
            return False
        finally:
            load.in_flight -= 1
        call.status = r.status_code
        if r.status_code != 200:
            load.failures.append(f"{call.path} {call.body}: {r.status_code} {r.text}")
            return False
        call.response = r.json()
        load.acked += 1
        if load.acked >= KILL_AFTER:
            load.enough.set()
        return True

    base = {"debit_account_id": load.customer, "credit_account_id": REVENUE}
    while not load.killed:
        key = uuid.uuid4().hex
        amount = rng.randint(1, 1_000)
        if rng.random() < 0.5:
            if not await do(Call(key, "/admin/ledger/transfers", {**base, "amount": amount})):
                return
            continue
        reserve = Call(key, "/admin/ledger/transfers", {**base, "amount": amount, "pending": True})
        if not await do(reserve):
            return
        if rng.random() < 0.75:  # the rest stay open
            assert reserve.response is not None
            body = {} if rng.random() < 0.5 else {"amount": rng.randint(1, amount)}
            post = f"/admin/ledger/transfers/{reserve.response['id']}/post"
            if not await do(Call(f"{key}-post", post, body)):
                return


async def kill_when_busy(server: Server, load: Load) -> None:
    await load.enough.wait()
    load.killed = True
    load.in_flight_at_kill = load.in_flight
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)


async def history(client: httpx.AsyncClient, account: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        r = await client.get(f"/admin/ledger/accounts/{account}/transfers", params=params)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        out += page
        if len(page) < 1000:
            return out
        params["before"] = page[-1]["id"]


async def check_consistent(client: httpx.AsyncClient, customer: str) -> list[dict[str, Any]]:
    """Balances agree with the committed transfers; returns the customer's transfers."""
    ts = await history(client, customer)
    assert len({t["id"] for t in ts}) == len(ts)
    keyed = Counter(t["idempotency_key"] for t in ts if t["idempotency_key"])
    assert not [k for k, n in keyed.items() if n > 1], "a key committed twice"
    resolutions = {t["pending_id"]: t for t in ts if t["pending_id"]}
    debits = sum(
        t["amount"]
        for t in ts
        if (t["kind"] == "posted" and t["debit_account_id"] == customer) or t["kind"] == "post_pending"
    )
    held = sum(t["amount"] for t in ts if t["kind"] == "pending" and t["id"] not in resolutions)
    funding = sum(t["amount"] for t in ts if t["credit_account_id"] == customer)
    assert funding == FUNDS

    r = await client.get("/admin/ledger/accounts")
    assert r.status_code == 200
    accounts = {a["id"]: a for a in r.json()["data"]}
    a = accounts[customer]
    assert (a["balance"], a["debits_posted"], a["debits_pending"]) == (FUNDS - debits, debits, held)
    assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"]
    rev = accounts[REVENUE]
    assert (rev["credits_posted"], rev["credits_pending"]) == (debits, held)
    assert sum(x["balance"] for x in accounts.values()) == 0
    assert sum(x["credits_pending"] - x["debits_pending"] for x in accounts.values()) == 0
    return ts


async def crash_and_recover(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "tollway.toml"
    config.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        'log_level = "warning"\n'
        "[database]\n"
        f'url = "{db_url}"\n'
        'sqlite_synchronous = "FULL"\n'
        "[admin]\n"
        f'token = "{ADMIN_TOKEN}"\n'
    )
    server = Server(config, tmp_path / "server.log")

    # 1. Load, then SIGKILL in the middle of it.
    async with running(server) as client:
        r = await client.post("/admin/ledger/accounts", json={"kind": "customer", "name": "crash"})
        assert r.status_code == 201, r.text
        load = Load(r.json()["id"])
        fund = {"debit_account_id": "sys_funding", "credit_account_id": load.customer, "amount": FUNDS}
        r = await send(client, Call("funding", "/admin/ledger/transfers", fund))
        assert r.status_code == 200, r.text
        t0 = time.perf_counter()
        clients = (client_loop(client, load, i) for i in range(CLIENTS))
        await asyncio.wait_for(asyncio.gather(kill_when_busy(server, load), *clients), timeout=120)
        loaded = time.perf_counter() - t0
    assert load.failures == [], load.failures[:5]
    assert load.in_flight_at_kill > 0, "nothing was in flight at the kill"
    acked = [c for c in load.calls if c.acked]
    lost = [c for c in load.calls if not c.acked]
    assert len(acked) >= KILL_AFTER and lost

    # 2. Restart on the same database.
    async with running(server) as client:
        # Every acknowledged transfer is there, exactly as acknowledged.
        sem = asyncio.Semaphore(CLIENTS)

        async def fetch(c: Call) -> None:
            assert c.response is not None
            async with sem:
                r = await client.get(f"/admin/ledger/transfers/{c.response['id']}")
            assert r.status_code == 200, f"acknowledged transfer lost: {c.response} ({r.text})"
            assert r.json() == c.response

        await asyncio.gather(*(fetch(c) for c in acked))
        before = {t["idempotency_key"]: t for t in await check_consistent(client, load.customer)}
        committed_unacked = sum(1 for c in lost if c.key in before)

        # Re-sending an acknowledged request returns what was acknowledged.
        for c in acked[:: max(1, len(acked) // 50)]:
            r = await send(client, c)
            assert (r.status_code, r.json()) == (200, c.response)

        # Re-sending one whose answer was lost: the committed one, or a new one — once.
        first: dict[str, dict[str, Any]] = {}
        for c in lost:
            r = await send(client, c)
            assert r.status_code == 200, f"re-send of {c} refused: {r.text}"
            t = r.json()
            if c.key in before:
                assert t == before[c.key], "a committed request was applied again"
            first[c.key] = t
        for c in lost:
            r = await send(client, c)
            assert (r.status_code, r.json()) == (200, first[c.key]), "a second re-send differed"
        after = {t["idempotency_key"]: t for t in await check_consistent(client, load.customer)}
        for c in lost:
            assert after[c.key] == first[c.key]
        for c in acked:
            assert c.response is not None and after[c.key] == c.response

    print(
        f"\n{len(acked)} acknowledged in {loaded:.2f}s, {len(lost)} unanswered at the kill "
        f"({load.in_flight_at_kill} in flight), {committed_unacked} of those had committed"
    )


def test_acknowledged_transfers_survive_kill_9(db_url: str, tmp_path: Path) -> None:
    asyncio.run(crash_and_recover(db_url, tmp_path))
