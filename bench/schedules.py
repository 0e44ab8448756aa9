"""Guardrails and schedules benchmark: the guardrail checks every agent turn
pays, and how fast persisted schedules fire.

    .venv/bin/python bench/schedules.py [--postgres-url postgresql://...] [--quick]

1. **Guardrails**, in-process, one check at a time (warm), over typical
   500-character support messages (a third carry an e-mail, a phone or a card
   number): ``check_input`` (length, blocked patterns, refusal rules,
   escalation keywords, a request for a human, injection flag, PII
   redaction), ``check_output`` (redaction, blocked patterns, length), and
   ``screen_untrusted`` over a 500-character retrieved chunk. A *turn* is one
   input check, one output check and three screened chunks (the demo agent's
   topK), reported against the 5 ms per-turn overhead budget of issue 9.
2. **Schedules**: N schedules due at once, created through
   ``Scheduler.schedule`` (created/s), then fired with a no-op handler by
   ``run_due`` in batches of 100 (fired/s: claim with a lease, run, record),
   by two schedulers on two engines racing over the same rows (each fired
   exactly once, checked), and one at a time (``limit=1``) for the cost of a
   claim; on SQLite (``synchronous = FULL``) and, given a URL, PostgreSQL.

Writes bench/results/schedules.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import dist, write_results
from tollway.agents.guardrails import GuardPolicy, check_input, check_output, screen_untrusted
from tollway.core.clock import SystemClock
from tollway.core.storage import make_engine
from tollway.runtime import Runtime
from tollway.schedules import Schedule, Scheduler
from tollway.settings import Settings
from wallets import drop, pg_database

RESULTS = Path(__file__).parent / "results" / "schedules.json"
BUDGET_US = 5000  # issue 9: per-turn overhead, excluding model time, at p50

POLICY = GuardPolicy.from_config(
    {
        "blocked_patterns": [r"\bsecret\s+project\b", r"drop\s+table"],
        "refusals": [{"pattern": r"\b(weather|stock\s+tips?)\b", "message": "I can only help with orders."}],
        "escalate_keywords": ["lawyer", "chargeback", "cancel my account"],
    }
)

SENTENCES = [
    "Hi, my order has not arrived yet and the tracking page says it is stuck in transit.",
    "I ordered two blue mugs and a teapot on March 3rd, gift wrapped.",
    "Could you check where the parcel is and whether I can get a refund if it is late?",
    "I have been a customer for years and this is the first time something like this happened.",
    "The box arrived damaged and one of the mugs is broken, what should I do?",
    "Can I change the delivery address to my office instead of my home?",
    "Is there a way to return the teapot if I do not like the colour?",
    "Thanks a lot for your help, I really appreciate it.",
    "The invoice shows the wrong billing name, can you fix it?",
    "My order number is 1234567 and the shipment id is SHP-2024-00981.",
]
PII = [
    "You can reach me at jane.doe@example.com if needed.",
    "Please call me back on (415) 555-0100 after five.",
    "I paid with the card 4111 1111 1111 1111, was it charged twice?",
]
CHUNK = (
    "Returns: items can be returned within 30 days of delivery for a full refund. The item must be "
    "unused and in its original packaging. Start a return from the order page; a prepaid label is "
    "emailed within one business day. Refunds go back to the original payment method five to seven "
    "business days after the parcel reaches our warehouse. Damaged items: send a photo within 48 hours "
    "of delivery and we ship a replacement at no cost, or refund it if it is out of stock. Gift orders "
    "can be returned by the recipient for store credit without the purchaser being told about it."
)


def messages(n: int, seed: int = 9) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts: list[str] = []
        if i % 3 == 0:
            parts.append(rng.choice(PII))
        while sum(len(p) + 1 for p in parts) < 500:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(SENTENCES))
        out.append(" ".join(parts)[:500])
    return out


def guardrails(n: int) -> dict[str, Any]:
    msgs = messages(n)
    chunk = CHUNK[:500]
    for m in msgs[:200]:  # warm
        check_input(m, POLICY)
        check_output(m, POLICY)
    inp, outp, scr, turn = [], [], [], []
    for m in msgs:
        t0 = time.perf_counter_ns()
        check_input(m, POLICY)
        t1 = time.perf_counter_ns()
        check_output(m, POLICY)
        t2 = time.perf_counter_ns()
        for _ in range(3):
            screen_untrusted(chunk, POLICY, source="chunk:bench")
        t3 = time.perf_counter_ns()
        inp.append(t1 - t0)
        outp.append(t2 - t1)
        scr.append((t3 - t2) // 3)
        turn.append(t3 - t0)
    turn_us = dist(turn, 1e3)
    return {
        "messages": n,
        "chars": 500,
        "with_pii": sum(1 for i in range(n) if i % 3 == 0),
        "check_input_us": dist(inp, 1e3),
        "check_output_us": dist(outp, 1e3),
        "screen_untrusted_us": dist(scr, 1e3),
        "turn_us": turn_us,
        "turn_p50_share_of_5ms_budget": round(turn_us["p50"] / BUDGET_US, 4),
    }


def settings(url: str) -> Settings:
    return Settings.model_validate({"database": {"url": url, "sqlite_synchronous": "FULL"}})


async def _noop(_: Schedule) -> None:
    return None


async def schedules(url: str, n: int) -> dict[str, Any]:
    rt = Runtime.build(settings(url))
    await rt.migrate()
    await rt.close()
    clock = SystemClock()
    engines = [make_engine(settings(url).database) for _ in range(2)]
    fired: Counter[str] = Counter()

    async def count(s: Schedule) -> None:
        fired[s.id] += 1

    a, b = (Scheduler(e, clock) for e in engines)
    for s in (a, b):
        s.register("bench", count)
    out: dict[str, Any] = {"schedules": n}
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await a.schedule(f"agent:bench:s{i % 50}", "bench", {"i": i}, delay_s=0)
        out["created_per_s"] = round(n / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        while await a.run_due(limit=100):
            pass
        secs = time.perf_counter() - t0
        assert len(fired) == n and set(fired.values()) == {1}, "each schedule fires once"
        out["one_scheduler"] = {"batch": 100, "fired_per_s": round(n / secs)}

        fired.clear()
        for i in range(n):
            await a.schedule(f"agent:bench:s{i % 50}", "bench", {"i": i}, delay_s=0)
        t0 = time.perf_counter()

        async def drain(s: Scheduler) -> None:
            while await s.run_due(limit=100):
                pass

        await asyncio.gather(drain(a), drain(b))
        secs = time.perf_counter() - t0
        assert len(fired) == n and set(fired.values()) == {1}, "two schedulers: each schedule fires once"
        out["two_schedulers"] = {"batch": 100, "fired_per_s": round(n / secs), "double_runs": 0}

        fired.clear()
        single = max(100, n // 10)
        for i in range(single):
            await a.schedule("agent:bench:one", "bench", {"i": i}, delay_s=0)
        lat: list[int] = []
        while True:
            t = time.perf_counter_ns()
            if not await a.run_due(limit=1):
                break
            lat.append(time.perf_counter_ns() - t)
        out["one_at_a_time"] = {
            "schedules": single,
            "fired_per_s": round(1e9 / (sum(lat) / len(lat))),
            "ms": dist(lat, 1e6),
        }
        out["batch_over_single_throughput"] = round(
            out["one_scheduler"]["fired_per_s"] / out["one_at_a_time"]["fired_per_s"], 2
        )
        return out
    finally:
        for e in engines:
            await e.dispose()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres-url", default=os.environ.get("TOLLWAY_BENCH_POSTGRES_URL", ""))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    msgs, n = (2000, 1000) if a.quick else (20000, 5000)
    res: dict[str, Any] = {"guardrails": guardrails(msgs)}
    print("guardrails", json.dumps(res["guardrails"]))
    with tempfile.TemporaryDirectory() as d:
        res["schedules"] = {"sqlite": await schedules(f"sqlite:///{Path(d) / 's.db'}", n)}
        print("sqlite", json.dumps(res["schedules"]["sqlite"]))
    if a.postgres_url:
        url, name = await pg_database(a.postgres_url)
        try:
            res["schedules"]["postgres"] = await schedules(url, n)
            print("postgres", json.dumps(res["schedules"]["postgres"]))
        finally:
            await drop(a.postgres_url, name)
    write_results(RESULTS, "schedules", res)


if __name__ == "__main__":
    asyncio.run(main())
