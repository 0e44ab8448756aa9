"""Memory soak: tollway's app in-process under a long mixed load, RSS sampled as it goes.

    .venv/bin/python bench/memory_soak.py [--requests 40000] [--every 2000]

The load is bench/inference.py's churn, 9 embeddings to 1 two-token chat, 4 at a
time, sent through httpx's ASGI transport so that only the server runs. Each sample
records the process's RSS and SQLite's own allocations (`sqlite3_memory_used`).
Writes bench/results/memory_soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from common import machine
from tollway.api.app import create_app
from tollway.inference.config import default_models
from tollway.settings import Settings

RESULTS = Path(__file__).parent / "results" / "memory_soak.json"
CHAT, EMBED = default_models()


def rss_mb() -> float:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)


async def soak(requests: int, every: int) -> list[dict[str, Any]]:
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    d = tempfile.mkdtemp(prefix="tollway-soak-")
    s = Settings.model_validate({"database": {"url": f"sqlite:///{d}/t.db"}, "admin": {"token": "x" * 20}})
    app = create_app(s)
    samples: list[dict[str, Any]] = []
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        c = await rt.customers.create("soak")
        await rt.ledger.transfer("sys_funding", c.account_id, 10**12)
        _, secret = await rt.keys.create(c.id)
        h = {"Authorization": f"Bearer {secret}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as http:
            sem = asyncio.Semaphore(4)

            async def one(i: int) -> None:
                async with sem:
                    if i % 10 == 9:
                        body = {"model": CHAT.name, "messages": [{"role": "user", "content": f"hi {i}"}]}
                        r = await http.post("/v1/chat/completions", json={**body, "max_tokens": 2}, headers=h)
                    else:
                        r = await http.post(
                            "/v1/embeddings", json={"model": EMBED.name, "input": f"t {i}"}, headers=h
                        )
                    r.raise_for_status()

            done = 0
            while done < requests:
                step = min(every, requests - done)
                await asyncio.gather(*(one(done + i) for i in range(step)))
                done += step
                sample = {
                    "requests": done,
                    "rss_mb": rss_mb(),
                    "sqlite_mb": round(lib.sqlite3_memory_used() / 2**20, 2),
                }
                samples.append(sample)
                print(sample, flush=True)
    return samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--every", type=int, default=2_000)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    samples = asyncio.run(soak(a.requests, a.every))
    rss = [x["rss_mb"] for x in samples]
    half = rss[len(rss) // 2 :]
    res = {
        "command": f"python bench/memory_soak.py --requests {a.requests} --every {a.every}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "samples": samples,
        "band_mb": {"min": min(rss), "max": max(rss)},
        "second_half_max_minus_first_half_max_mb": round(max(half) - max(rss[: len(rss) // 2]), 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
