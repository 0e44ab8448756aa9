"""Wallets benchmark: authorization decisions, authorizations/s, and broker-paid
x402 fetches against tollway's own gateway.

    .venv/bin/python bench/wallets.py [--postgres-url postgresql://...] [--quick]

1. **Decision latency**, in-process, one authorization at a time (warm): the
   decision (the token, the policy, the velocity guard and the ledger
   reservation of the amount and of every limit, decided under the ledger's
   write lock) and the durable answer (the hold and the authorization
   committed). Wallet with a daily limit, a provider cap and a token allowance.
2. **Authorizations per second**, 64 in flight, each approved (and left held),
   on SQLite (``synchronous = FULL``) and PostgreSQL.
3. **Broker**: a real ``tollway serve`` with the demo x402 route (devnet); the
   broker (in this process) fetches it paying from a wallet — fetch, 402,
   authorize, sign, refetch, settle, capture — against the same resource
   fetched unpaid (the rule is ``unauthenticated_only`` and the unpaid fetch
   carries an API key), 8 in flight, same run.

Writes bench/results/wallets.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import secrets
import shlex
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from common import admin_token, dist, machine, serve
from tollway.runtime import Runtime
from tollway.settings import Settings

RESULTS = Path(__file__).parent / "results" / "wallets.json"
POLICY = {"spending_limits": [{"amount": "$1000000", "interval": "daily"}], "provider_cap": "$1000000"}


def settings(url: str, **over: Any) -> Settings:
    return Settings.model_validate({"database": {"url": url, "sqlite_synchronous": "FULL"}, **over})


async def wallet(rt: Runtime, with_key: bool = False) -> tuple[str, str]:
    w = await rt.wallets.create(owner="bench", policy=POLICY, with_key=with_key)
    await rt.wallets.topup(w.id, "$1000000")
    _, token = await rt.wallets.grant(w.id, name="bench", limits={"total_allowance": "$1000000"})
    return w.id, token


async def latency(url: str, n: int) -> dict[str, Any]:
    rt = Runtime.build(settings(url))
    try:
        await rt.migrate()
        _, token = await wallet(rt)
        a = rt.authorizer
        for i in range(50):  # warm: limit accounts funded, statements prepared
            await a.authorize(
                token, amount=1, payee="api.example.com", category="api_access", idempotency_key=f"w{i}"
            )
        # As `tollway serve` does once started: start-up's objects leave the
        # cyclic collector's passes (a full pass over them takes ~100 ms here).
        gc.collect()
        gc.freeze()
        decided, durable = [], []
        for i in range(n):
            d = await a.authorize(
                token, amount=1, payee="api.example.com", category="api_access", idempotency_key=f"k{i}"
            )
            assert d.status == "approved", d
            decided.append(d.decided_ns)
            durable.append(d.durable_ns)
        return {"authorizations": n, "decision_ms": dist(decided, 1e6), "durable_ms": dist(durable, 1e6)}
    finally:
        await rt.close()


async def throughput(url: str, seconds: float, concurrency: int = 64) -> dict[str, Any]:
    rt = Runtime.build(settings(url))
    try:
        await rt.migrate()
        _, token = await wallet(rt)
        a = rt.authorizer
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                d = await a.authorize(
                    token,
                    amount=1,
                    payee="api.example.com",
                    category="api_access",
                    idempotency_key=f"{w}-{i}",
                )
                assert d.status == "approved", d
                i += 1
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        secs = time.perf_counter() - t0
        return {
            "concurrency": concurrency,
            "seconds": round(secs, 2),
            "authorizations_per_s": round(done / secs),
        }
    finally:
        await rt.close()


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


async def broker(tmp: Path, seconds: float, concurrency: int = 8) -> dict[str, Any]:
    rule = (
        '\n[[x402.rules]]\nname = "weather"\npath = "/demo/weather"\norigin = "demo"\nprice = "$0.001"\n'
        "unauthenticated_only = true\n"
    )

    def set_pay_to(text: str) -> str:
        return text.replace('pay_to = ""', 'pay_to = "0x' + "ab" * 20 + '"')

    os.environ["TOLLWAY_WALLET_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()
    with serve(tmp, rule, edit=set_pay_to) as srv:
        admin = admin_token(tmp)
        cust = _post(srv.url + "/admin/customers", {"name": "bench"}, admin)
        api_key = _post(srv.url + "/admin/keys", {"customer_id": cust["id"]}, admin)["key"]
        rt = Runtime.build(
            settings(
                f"sqlite:///{tmp / 'broker.db'}", wallets={"broker_allow": ["127.0.0.1"], "hold_seconds": 600}
            )
        )
        try:
            await rt.migrate()
            wid, token = await wallet(rt, with_key=True)
            address = (await rt.wallets.get(wid)).evm_address
            _post(srv.url + "/admin/x402/devnet/fund", {"address": address, "amount": "$1000"}, admin)
            url = srv.url + "/demo/weather?city=Lisbon"
            out: dict[str, Any] = {"server": srv.cmd, "concurrency": concurrency}
            for label, headers in (("paid", {}), ("unpaid", {"authorization": f"Bearer {api_key}"})):
                out[label] = await _load(rt, token, url, headers, label == "paid", seconds, concurrency)
            out["paid_over_unpaid_throughput"] = round(
                out["paid"]["fetches_per_s"] / out["unpaid"]["fetches_per_s"], 3
            )
            return out
        finally:
            await rt.close()


async def _load(
    rt: Runtime, token: str, url: str, headers: dict[str, str], paid: bool, seconds: float, concurrency: int
) -> dict[str, Any]:
    for _ in range(20):  # warm
        await rt.broker.fetch(token, method="GET", url=url, headers=headers)
    lat: list[int] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter_ns()
            r = await rt.broker.fetch(token, method="GET", url=url, headers=headers)
            lat.append(time.perf_counter_ns() - t0)
            assert r["status"] == 200, r
            assert (r["payment"] is not None) == paid, r

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    secs = time.perf_counter() - t0
    return {"fetches": len(lat), "fetches_per_s": round(len(lat) / secs, 1), "ms": dist(lat, 1e6)}


def _remove_sqlite(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    for s in ("", "-wal", "-shm"):
        Path(path + s).unlink(missing_ok=True)


async def pg_database(base: str) -> tuple[str, str]:
    name = f"tollway_bench_{uuid.uuid4().hex[:10]}"
    u = make_url(base)
    conn = await asyncpg.connect(u.set(drivername="postgresql").render_as_string(hide_password=False))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return str(u.set(database=name).render_as_string(hide_password=False)), name


async def drop(base: str, name: str) -> None:
    u = make_url(base)
    conn = await asyncpg.connect(u.set(drivername="postgresql").render_as_string(hide_password=False))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres-url", default=os.environ.get("TOLLWAY_BENCH_POSTGRES_URL", ""))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n, secs = (300, 3.0) if a.quick else (3000, 10.0)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        backends = [("sqlite", f"sqlite:///{tmp / 'w.db'}", "")]
        if a.postgres_url:
            url, name = await pg_database(a.postgres_url)
            backends.append(("postgres", url, name))
        try:
            for label, url, _ in backends:
                res[label] = {"latency": await latency(url, n)}
                if label == "sqlite":
                    _remove_sqlite(url)
                else:
                    await drop(a.postgres_url, backends[1][2])
                    backends[1] = ("postgres", *(await pg_database(a.postgres_url)))
                    url = backends[1][1]
                res[label]["throughput"] = await throughput(url, secs)
                print(label, json.dumps(res[label]))
        finally:
            if len(backends) > 1:
                await drop(a.postgres_url, backends[1][2])
        (tmp / "srv").mkdir()
        res["broker"] = await broker(tmp / "srv", secs)
        print("broker", json.dumps(res["broker"]))
    result = {
        "benchmark": "wallets",
        "command": shlex.join(["python", "bench/wallets.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": res,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
