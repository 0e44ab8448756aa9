"""Billing benchmark: entitlement checks in-process, and usage event ingest on SQLite.

    .venv/bin/python bench/billing.py [--quick]

1. **Entitlement check** (``Billing.standing`` + ``Billing.require``), warm,
   as the request path makes it for every AI request: the plan from the
   subscription columns read with the API key, the feature flag, and the
   request-quota caps (whose ledger accounts are funded once per period).
   Nanosecond samples of single checks, p50/p99/max.
2. **Usage ingest** on a fresh SQLite file with ``synchronous = FULL``:
   batches of 5,000 events (100 customers, 3 features, 4 models, one UTC
   day), four batches in flight at a time, in-process (``tollway.billing.usage.ingest``) and over HTTP
   (``POST /admin/customers/{id}/usage``, in-process ASGI), then a resend
   of 10% of them (all duplicates), then the day's rollup, which must match
   the generated totals exactly.

Writes bench/results/billing.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from common import dist, machine
from tollway.api.app import create_app
from tollway.billing import usage as U
from tollway.billing.periods import to_us
from tollway.runtime import Runtime
from tollway.settings import Settings

RESULTS = Path(__file__).parent / "results" / "billing.json"
ADMIN = "bench-admin-token-0123456789"
DAY = dt.date(2026, 11, 20)
CONCURRENCY = 4  # batches in flight at once, as several clients would send them
PLANS = [
    {"lookup_key": "free", "daily_requests": 1_000_000_000, "features": ["ai.chat", "ai.embeddings"]},
    {
        "lookup_key": "pro",
        "included_requests": 1_000_000_000,
        "features": ["*"],
        "quotas": {"reports": 10**9},
    },
]


def settings(db: Path) -> Settings:
    return Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{db}", "sqlite_synchronous": "FULL"},
            "admin": {"token": ADMIN},
            "billing": {"plans": PLANS},
        }
    )


async def entitlements(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.build(settings(Path(d) / "t.db"))
        try:
            await rt.migrate()
            c = await rt.customers.create("bench")
            _, secret = await rt.keys.create(c.id)
            key = await rt.keys.verify(secret)
            b = rt.billing
            out: dict[str, Any] = {}
            for name, feature in (("feature_flag", "ai.chat"), ("feature_and_request_quota", "requests")):
                s = b.standing(c.id, key.billing)
                await b.require(s, "ai.chat")
                await b.require(s, feature)  # warm: the period's quota account is funded once
                samples = []
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    s = b.standing(c.id, key.billing)
                    await b.require(s, "ai.chat")
                    if feature != "ai.chat":
                        await b.require(s, feature)
                    samples.append(time.perf_counter_ns() - t0)
                out[name] = {"checks": n, "us": dist(samples, 1_000)}
            return out
        finally:
            await rt.close()


def make_events(n: int, customers: list[str], seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    rnd = random.Random(seed)
    start = to_us(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC))
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i in range(n):
        cid = customers[i % len(customers)]
        by_customer[cid].append(
            {
                "id": f"ev{i:09d}",
                "feature": ("reports", "exports", "seats")[i % 3],
                "quantity": rnd.randint(1, 1000),
                "model": ("m1", "m2", "m3", "m4")[i % 4],
                "timestamp_us": start + rnd.randrange(86_400_000_000),
            }
        )
    return by_customer


def batches(
    by_customer: dict[str, list[dict[str, Any]]], size: int
) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for cid, evs in by_customer.items():
        for i in range(0, len(evs), size):
            out.append((cid, evs[i : i + size]))
    random.Random(1).shuffle(out)
    return out


async def ingest(n: int, batch: int, over_http: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.build(settings(Path(d) / "t.db"))
        try:
            await rt.migrate()
            customers = [(await rt.customers.create(f"c{i}")).id for i in range(100)]
            by_customer = make_events(n, customers)
            work = batches(by_customer, batch)
            app = create_app(rt=rt)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http:

                async def send(cid: str, evs: list[dict[str, Any]]) -> dict[str, Any]:
                    if not over_http:
                        return await U.ingest(rt.engine, rt.clock, cid, evs)
                    r = await http.post(
                        f"/admin/customers/{cid}/usage",
                        content=orjson.dumps({"events": evs}),
                        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
                    )
                    assert r.status_code == 200, r.text
                    res: dict[str, Any] = r.json()
                    return res

                t0 = time.perf_counter()
                recorded = 0
                queue = list(reversed(work))

                async def worker() -> None:
                    nonlocal recorded
                    while queue:
                        cid, evs = queue.pop()
                        r = await send(cid, evs)
                        recorded += r["recorded"]

                await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])
                secs = time.perf_counter() - t0
                assert recorded == n
                # Resend 10% of the batches: every event is a duplicate.
                t1 = time.perf_counter()
                dup = 0
                for cid, evs in work[: max(1, len(work) // 10)]:
                    r = await send(cid, evs)
                    assert r["recorded"] == 0
                    dup += r["duplicates"]
                dup_secs = time.perf_counter() - t1
            t2 = time.perf_counter()
            rows = await U.rollup_day(rt.engine, rt.clock, DAY)
            rollup_secs = time.perf_counter() - t2
            got = await U.rollups(rt.engine, start=DAY, end=DAY)
            expect: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
            for cid, evs in by_customer.items():
                for e in evs:
                    acc = expect[(cid, e["feature"], e["model"])]
                    acc[0] += 1
                    acc[1] += e["quantity"]
            actual = {(r["customer_id"], r["feature"], r["model"]): [r["events"], r["quantity"]] for r in got}
            correct = actual == dict(expect)
            assert correct, "rollups differ from the generated events"
            return {
                "path": "http" if over_http else "in_process",
                "events": n,
                "batch": batch,
                "concurrency": CONCURRENCY,
                "seconds": round(secs, 3),
                "events_per_s": round(n / secs),
                "duplicates_resent": dup,
                "duplicates_per_s": round(dup / dup_secs),
                "rollup_rows": rows,
                "rollup_seconds": round(rollup_secs, 3),
                "rollups_correct": correct,
            }
        finally:
            await rt.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Fewer samples and events (a smoke run).")
    a = ap.parse_args()
    checks = 20_000 if a.quick else 200_000
    n = 50_000 if a.quick else 500_000
    ent = await entitlements(checks)
    print("entitlements:", json.dumps(ent))
    runs = []
    for over_http in (False, True):
        r = await ingest(n if not over_http else n // 2, 5_000, over_http)
        print("ingest:", json.dumps(r))
        runs.append(r)
    result = {
        "benchmark": "billing",
        "command": shlex.join(["python", "bench/billing.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "entitlement_check": ent,
        "ingest": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
