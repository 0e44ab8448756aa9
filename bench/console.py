"""Console benchmark: the overview's server time with a large request log.

    .venv/bin/python bench/console.py [--rows 1000000] [--days 30] [--postgres-url postgresql://...]
    .venv/bin/python bench/console.py --quick        # 10,000 rows: a smoke run

1. Seeds ``--rows`` request-log rows (spread over ``--days`` days up to now,
   over 50 customers and 6 models, a tenth of them with a metered usage
   event) by bulk insert: SQLite's executemany in one transaction, or
   PostgreSQL's COPY.
2. Builds the console's hourly rollups from nothing (``rollups.refresh``, the
   one-time cost after an upgrade), then the recurring refresh after 1,000 new
   rows in the current hour (what the server's loop pays every
   ``refresh_seconds``).
3. Measures the overview's server time: in-process requests (ASGI, no socket)
   of a signed-in operator to ``/console/overview.json`` and ``/console/overview``
   for each range (24h, 7d, 30d): p50/p99/max over 30 requests after 3 warm-ups.
   The target (issue 24): p50 <= 200 ms at 1,000,000 rows; the overview reads
   the rollups only, never the request log.

Writes bench/results/console.json; see docs/benchmarks.md and docs/console.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from common import dist, write_results
from tollway.api.app import create_app
from tollway.console import rollups
from tollway.core.ids import new_id
from tollway.core.schema import console_requests_hourly as RH
from tollway.core.schema import request_log, usage_events
from tollway.runtime import Runtime
from tollway.settings import Settings
from wallets import drop, pg_database

RESULTS = Path(__file__).parent / "results" / "console.json"
ADMIN = "bench-admin-token-0123456789"
TARGET_MS = 200.0
HOUR_US = 3_600_000_000
REQUESTS = 30


def rows(n: int, days: int, now_us: int, customers: list[str], models: list[str]) -> list[tuple[Any, ...]]:
    rnd = random.Random(24)
    span = days * 86_400_000_000
    out = []
    for _ in range(n):
        status = 200 if rnd.random() > 0.03 else rnd.choice((429, 402, 502))
        tin, tout = rnd.randint(10, 2000), rnd.randint(1, 800)
        out.append(
            (
                new_id("req"),
                now_us - rnd.randrange(span),
                None,
                rnd.choice(customers),
                "/v1/chat/completions",
                rnd.choice(models),
                None,
                status,
                "budget_exceeded" if status == 402 else None,
                0,
                "HIT" if rnd.random() < 0.1 else "MISS",
                1,
                tin,
                tout,
                0,
                (tin + 3 * tout) if status == 200 else 0,
                rnd.randint(5, 900),
                None,
                None,
                None,
                None,
                None,  # trace_id (telemetry)
            )
        )
    return out


def usage(log: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [
        (new_id("use"), None, "acct", r[3], "neurons", r[15], r[15], "{}", r[1], r[5])
        for r in log[::10]
        if r[15]
    ]


async def seed(rt: Runtime, url: str, log: list[tuple[Any, ...]]) -> float:
    t0 = time.perf_counter()
    use = usage(log)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA synchronous = OFF")
            cols = [c.name for c in request_log.columns]
            conn.executemany(
                f"INSERT INTO request_log ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", log
            )
            ucols = [c.name for c in usage_events.columns]
            conn.executemany(
                f"INSERT INTO usage_events ({', '.join(ucols)}) VALUES ({', '.join('?' * len(ucols))})", use
            )
    else:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.copy_records_to_table(
                "request_log", records=log, columns=[c.name for c in request_log.columns]
            )
            await conn.copy_records_to_table(
                "usage_events", records=use, columns=[c.name for c in usage_events.columns]
            )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    return time.perf_counter() - t0


async def measure(rt: Runtime) -> dict[str, Any]:
    app = create_app(rt=rt)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c:
        r = await c.post("/console/login", data={"token": ADMIN}, headers={"origin": "http://bench"})
        assert r.status_code == 303, r.text
        for path in ("/console/overview.json", "/console/overview"):
            for rng in ("24h", "7d", "30d"):
                ns = []
                for i in range(REQUESTS + 3):
                    t0 = time.perf_counter_ns()
                    r = await c.get(f"{path}?range={rng}")
                    took = time.perf_counter_ns() - t0
                    assert r.status_code == 200, r.text[:200]
                    if i >= 3:
                        ns.append(took)
                out[f"{path}?range={rng}"] = dist(ns, 1e6)
    return out


async def run(url: str, n: int, days: int) -> dict[str, Any]:
    settings = Settings.model_validate(
        {"database": {"url": url}, "admin": {"token": ADMIN}, "console": {"refresh_seconds": 3600}}
    )
    rt = Runtime.build(settings)
    try:
        await rt.migrate()
        now = rt.clock.now_us()
        customers = [(await rt.customers.create(f"Customer {i}")).id for i in range(50)]
        models = ["llama-3.1-8b", "qwen-2.5-7b", "mistral-7b", "gpt-4o-mini", "claude-haiku", "smollm2"]
        log = rows(n, days, now, customers, models)
        seeded_s = await seed(rt, url, log)
        t0 = time.perf_counter()
        await rollups.refresh(rt.engine, rt.clock.now_us())
        full_s = time.perf_counter() - t0
        async with rt.engine.begin() as conn:
            rollup_rows = (await conn.execute(select(func.count()).select_from(RH))).scalar_one()
        hour = now // HOUR_US * HOUR_US  # 1,000 new rows in the current hour
        more = [
            (r[0], hour + i % max(now - hour, 1), *r[2:])
            for i, r in enumerate(rows(1000, 1, now, customers, models))
        ]
        await seed(rt, url, more)
        t0 = time.perf_counter()
        await rollups.refresh(rt.engine, rt.clock.now_us())
        incremental_s = time.perf_counter() - t0
        timings = await measure(rt)
        p50 = timings["/console/overview.json?range=30d"]["p50"]
        return {
            "rows": n,
            "days": days,
            "rollup_rows": rollup_rows,
            "seed_s": round(seeded_s, 2),
            "rollup_full_s": round(full_s, 3),
            "rollup_incremental_s_after_1000_rows": round(incremental_s, 4),
            "overview_ms": timings,
            "target_ms": TARGET_MS,
            "meets_target": all(t["p50"] <= TARGET_MS for t in timings.values()),
            "overview_json_30d_p50_ms": p50,
        }
    finally:
        await rt.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--postgres-url", default=os.environ.get("TOLLWAY_BENCH_POSTGRES_URL", ""))
    ap.add_argument("--quick", action="store_true", help="10,000 rows: a smoke run")
    a = ap.parse_args()
    n = 10_000 if a.quick else a.rows
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = await run(f"sqlite:///{tmp}/bench.db", n, a.days)
        print("sqlite", results["sqlite"])
    if a.postgres_url:
        url, name = await pg_database(a.postgres_url)
        try:
            results["postgres"] = await run(url, n, a.days)
            print("postgres", results["postgres"])
        finally:
            await drop(a.postgres_url, name)
    write_results(RESULTS, "console", results)


if __name__ == "__main__":
    asyncio.run(main())
