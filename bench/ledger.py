"""Ledger benchmark: durable two-phase transfers/s, commit latency, balance reads, idle RSS.

    .venv/bin/python bench/ledger.py [--postgres-url postgresql://user@host:5432/db] [--quick]

Every workload runs on a fresh migrated database: a temp SQLite file with
``sqlite_synchronous = "FULL"`` (fsync on every commit) and, when a PostgreSQL URL
is given (or ``TOLLWAY_BENCH_POSTGRES_URL`` is set), a throwaway database
``tollway_bench_<random>`` created on that server and dropped afterwards.
Writes bench/results/ledger.json and prints a summary; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from common import dist, machine, rss_mb, serve
from tollway.core.config import DatabaseConfig
from tollway.core.migrate import upgrade
from tollway.core.schema import ledger_accounts
from tollway.core.storage import make_engine
from tollway.ledger import AccountKind, Ledger
from tollway.ledger.types import default_flags
from tollway.observe import metrics

RESULTS = Path(__file__).parent / "results" / "ledger.json"
FUNDING = 10**12  # micro-USD per client account: balances never limit the run


async def sample(fn: Callable[[], Awaitable[object]], n: int) -> list[int]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def writer_counters() -> tuple[float, float, float]:
    """(batches, requests, seconds spent in batches) so far, from the ledger's own histograms."""
    size, secs = metrics.LEDGER_BATCH_SIZE, metrics.LEDGER_COMMIT_SECONDS  # plain numbers (plainseries)
    return sum(size.counts), size.sum, secs.sum


async def pg_admin(url: str, sql: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(sql))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_ledger(pg_url: str | None, tmp: Path, batch_max: int) -> AsyncIterator[tuple[Ledger, str]]:
    """A Ledger (and its URL) on a brand-new migrated database, dropped afterwards."""
    name = f"tollway_bench_{uuid.uuid4().hex[:10]}"
    if pg_url is None:
        url = f"sqlite:///{tmp / name}.db"
    else:
        await pg_admin(pg_url, f'CREATE DATABASE "{name}"')
        url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(DatabaseConfig(url=url, sqlite_synchronous="FULL"))
    ledger = Ledger(engine, batch_max=batch_max)
    try:
        await upgrade(engine)
        yield ledger, url
    finally:
        await ledger.close()
        await engine.dispose()
        if pg_url is not None:
            await pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def funded_accounts(ledger: Ledger, n: int) -> list[str]:
    """``n`` customer accounts (one bulk insert), each funded through the ledger."""
    ids = [f"acct_bench_{i:05d}" for i in range(n)]
    zero = dict.fromkeys(("debits_pending", "debits_posted", "credits_pending", "credits_posted"), 0)
    flags = default_flags(AccountKind.CUSTOMER)
    rows = [{"id": i, "kind": "customer", "flags": flags, "name": i, "created_at_us": 0} | zero for i in ids]
    async with ledger.engine.begin() as conn:
        await conn.execute(insert(ledger_accounts), rows)
    await asyncio.gather(*(ledger.transfer("sys_funding", i, FUNDING) for i in ids))
    return ids


async def two_phase(
    pg_url: str | None, tmp: Path, *, workers: int, count: int, batch_max: int, reads: int = 0
) -> dict[str, Any]:
    """``workers`` clients loop reserve(10) → post(7) until ``count`` two-phase transfers are done."""
    async with fresh_ledger(pg_url, tmp, batch_max) as (ledger, url):
        accts = await funded_accounts(ledger, workers)
        lat: dict[str, list[int]] = {"reserve": [], "post": []}
        left = count

        async def client(acct: str) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter_ns()
                p = await ledger.reserve(acct, "sys_revenue", 10)
                t1 = time.perf_counter_ns()
                await ledger.post(p.id, 7)
                lat["post"].append(time.perf_counter_ns() - t1)
                lat["reserve"].append(t1 - t0)

        c0 = writer_counters()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(a) for a in accts))
        secs = time.perf_counter() - t0
        batches, reqs, busy = (b - a for a, b in zip(c0, writer_counters(), strict=True))
        revenue = await ledger.get_account("sys_revenue")
        assert revenue.credits_posted == 7 * count, "revenue does not match the transfers posted"
        out: dict[str, Any] = {
            "workers": workers,
            "two_phase_transfers": count,
            "batch_max": batch_max,
            "seconds": round(secs, 3),
            "two_phase_per_s": round(count / secs),
            "ledger_requests_per_s": round(2 * count / secs),
            "mean_batch_size": round(reqs / batches, 1),
            "mean_batch_ms": round(busy / batches * 1e3, 2),  # load + apply + write + COMMIT
            "writer_busy_fraction": round(busy / secs, 2),
            "latency_ms": {k: dist(v, 1e6) for k, v in lat.items()}
            | {"combined": dist(lat["reserve"] + lat["post"], 1e6)},
        }
        if reads:
            await sample(lambda: ledger.get_account(accts[0]), 500)  # warm the reader / pool
            out["balance_read_us"] = dist(await sample(lambda: ledger.get_account(accts[0]), reads), 1e3)
            out["balance_read_us"]["reads"] = reads
            if pg_url:  # the wire floor: one prepared asyncpg statement, no pool, no SQLAlchemy
                conn = await asyncpg.connect(url)
                stmt = await conn.prepare("SELECT * FROM ledger_accounts WHERE id = $1")
                floor = await sample(lambda: stmt.fetchrow(accts[0]), reads)
                await conn.close()
                out["balance_read_us"]["raw_asyncpg_floor"] = dist(floor, 1e3)
        return out


async def backend(pg_url: str | None, tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    be, runs = "postgres" if pg_url else "sqlite", []
    for i in range(a.repeat):
        print(f"[{be}] group commit: {a.workers} clients x {a.transfers} ({i + 1}/{a.repeat})", flush=True)
        reads = a.reads if i == 0 else 0  # balance reads once, on the first run's database
        runs.append(
            await two_phase(pg_url, tmp, workers=a.workers, count=a.transfers, batch_max=2048, reads=reads)
        )
    read_us = runs[0].pop("balance_read_us")
    gc = sorted(runs, key=lambda r: r["two_phase_per_s"])[len(runs) // 2]  # report the median run
    gc["runs_two_phase_per_s"] = [r["two_phase_per_s"] for r in runs]
    print(f"[{be}] group commit, {a.low_workers} clients x {a.low_transfers}", flush=True)
    low = await two_phase(pg_url, tmp, workers=a.low_workers, count=a.low_transfers, batch_max=2048)
    print(f"[{be}] no group commit (batch_max=1): {a.workers} clients x {a.unbatched_transfers}", flush=True)
    one = await two_phase(pg_url, tmp, workers=a.workers, count=a.unbatched_transfers, batch_max=1)
    return {
        "group_commit": gc,
        "group_commit_low_concurrency": low,
        "no_group_commit": one,
        "group_commit_speedup": round(gc["two_phase_per_s"] / one["two_phase_per_s"], 1),
        "balance_read_us": read_us,
    }


def idle_rss(tmp: Path, settle_s: float) -> dict[str, Any]:
    """`tollway serve` on a fresh `tollway init` config (SQLite), healthy and idle: VmRSS."""
    with serve(tmp) as srv:
        time.sleep(settle_s)
        mb = rss_mb(srv.pid)
        exe_name = Path(os.readlink(f"/proc/{srv.pid}/exe")).name  # the python process itself
    return {"rss_mb": mb["VmRSS"], "peak_rss_mb": mb["VmHWM"], "process": exe_name, "cmd": srv.cmd}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[tuple[str, float, float, bool]] = []  # name, measured, target, higher is better
    for be, rate in (("sqlite", 20_000), ("postgres", 5_000)):
        if r := res.get(be):
            rows.append((f"{be}: two-phase transfers/s", r["group_commit"]["two_phase_per_s"], rate, True))
            for key, note in (("group_commit_low_concurrency", ""), ("group_commit", ", incl. queueing")):
                x = r[key]
                name = f"{be}: p99 commit latency (ms), {x['workers']} clients{note}"
                rows.append((name, x["latency_ms"]["combined"]["p99"], 10, False))
            rows.append((f"{be}: balance read p99 (µs)", r["balance_read_us"]["p99"], 50, False))
    rows.append(("idle RSS of `tollway serve` (MB)", res["idle"]["rss_mb"], 150, False))
    return [{"name": n, "measured": m, "target": t, "pass": m >= t if hi else m <= t} for n, m, t, hi in rows]


async def run(a: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], str | None]:
    res: dict[str, Any] = {"sqlite": await backend(None, tmp, a)}
    if not a.postgres_url:
        return res, None
    res["postgres"] = await backend(a.postgres_url, tmp, a)
    keys = ("fsync", "synchronous_commit", "shared_buffers")
    res["postgres"]["server_settings"] = {k: await pg_admin(a.postgres_url, f"SHOW {k}") for k in keys}
    return res, await pg_admin(a.postgres_url, "SHOW server_version")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--postgres-url", default=os.environ.get("TOLLWAY_BENCH_POSTGRES_URL"))
    p.add_argument("--transfers", type=int, default=40_000, help="two-phase transfers per group-commit run")
    p.add_argument("--workers", type=int, default=500, help="concurrent in-process clients")
    p.add_argument("--repeat", type=int, default=3, help="group-commit runs; the median is reported")
    p.add_argument("--low-workers", type=int, default=50, help="clients in the low-concurrency run")
    p.add_argument("--low-transfers", type=int, default=10_000, help="two-phase, low-concurrency run")
    p.add_argument("--unbatched-transfers", type=int, default=2_000, help="two-phase with batch_max=1")
    p.add_argument("--reads", type=int, default=20_000, help="balance reads per backend")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run of a few seconds")
    a = p.parse_args()
    if a.quick:
        a.transfers, a.workers, a.repeat, a.low_transfers, a.low_workers = 2_000, 100, 1, 500, 20
        a.unbatched_transfers, a.reads = 200, 2_000
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except (ImportError, AttributeError):
        runner = asyncio.run
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tollway-bench-") as d:
        res, pg_version = runner(run(a, Path(d)))
        print("[serve] idle memory", flush=True)
        res["idle"] = idle_rss(Path(d), settle_s=0.5 if a.quick else 2.0)
    argv = [make_url(x).render_as_string() if x == a.postgres_url else x for x in sys.argv]  # no passwords
    report = {
        "benchmark": "ledger",
        "command": shlex.join([os.path.relpath(sys.executable), *argv]),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(postgres=pg_version),
        "event_loop": runner.__module__.split(".")[0],
        "durability": "SQLite WAL + synchronous=FULL; PostgreSQL per server_settings",
        "quick": a.quick,
        "results": res,
        "targets": targets(res),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    report["all_targets_pass"] = all(t["pass"] for t in report["targets"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for be in ("sqlite", "postgres"):
        for key in ("group_commit", "group_commit_low_concurrency", "no_group_commit") if be in res else ():
            x, c = res[be][key], res[be][key]["latency_ms"]["combined"]
            print(
                f"{be:8} {x['workers']:4} clients, batch_max {x['batch_max']:4}: {x['two_phase_per_s']:6}"
                f" two-phase/s, mean batch {x['mean_batch_size']:5}, latency ms p50 {c['p50']} p99 {c['p99']}"
            )
        if be in res:
            print(f"{be:8} group commit x{res[be]['group_commit_speedup']} vs batch_max=1")
    for t in report["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
    print(f"wrote {a.out} in {report['elapsed_s']} s")


if __name__ == "__main__":
    main()
