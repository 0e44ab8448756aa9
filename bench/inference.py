"""Inference benchmark: tollway's HTTP API against raw llama-cpp-python and
sentence-transformers in-process, on the same model, threads and prompts, in
one run (alternating, so machine noise hits both sides alike).

    .venv/bin/python bench/inference.py [--quick]

Reports generation tokens/s (API / raw), streaming time-to-first-token
overhead, embeddings/s at batch 32 (API / raw), start-up time, and the
server's RSS with both models loaded before and after N requests.
Writes bench/results/inference.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from common import admin_token, dist, machine, rss_mb, serve
from tollway.inference.backends.embedded import default_gguf, default_sentence_transformer
from tollway.inference.config import default_models

RESULTS = Path(__file__).parent / "results" / "inference.json"
CHAT, EMBED = default_models()
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle for a child.",
    "List some uses of copper and explain each one.",
    "Tell me about the history of bread.",
]
TEXTS = [f"sentence number {i} about tollways, ledgers and small language models" for i in range(32)]


def raw_models(threads: int) -> tuple[Any, Any]:
    import torch
    from llama_cpp import Llama
    from sentence_transformers import SentenceTransformer

    if EMBED.n_threads:  # the same torch threads as tollway's embeddings model
        torch.set_num_threads(EMBED.n_threads)

    llm = Llama(
        model_path=str(default_gguf()),
        n_ctx=CHAT.n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    st = SentenceTransformer(str(default_sentence_transformer()), device="cpu", local_files_only=True)
    return llm, st


def raw_generate(llm: Any, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, seconds, ttft seconds) with create_chat_completion streaming."""
    t0 = time.perf_counter()
    ttft = 0.0
    n = 0
    for ch in llm.create_chat_completion(
        [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0, stream=True
    ):
        if ch["choices"][0]["delta"].get("content"):
            n += 1
            if not ttft:
                ttft = time.perf_counter() - t0
    return n, time.perf_counter() - t0, ttft


async def api_generate(
    http: httpx.AsyncClient, key: str, prompt: str, max_tokens: int
) -> tuple[int, float, float]:
    body = {
        "model": CHAT.name,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            ch = json.loads(line[6:])
            if ch.get("usage"):
                tokens = ch["usage"]["completion_tokens"]
            elif ch["choices"] and ch["choices"][0]["delta"].get("content") and not ttft:
                ttft = time.perf_counter() - t0
    return tokens, time.perf_counter() - t0, ttft


async def setup_customer(http: httpx.AsyncClient, token: str) -> str:
    h = {"Authorization": f"Bearer {token}"}
    c = (await http.post("/admin/customers", json={"name": "bench"}, headers=h)).json()
    t = {"debit_account_id": "sys_funding", "credit_account_id": c["account_id"], "amount": 10**12}
    (await http.post("/admin/ledger/transfers", json=t, headers=h)).raise_for_status()
    key: str = (await http.post("/admin/keys", json={"customer_id": c["id"]}, headers=h)).json()["key"]
    return key


async def churn(http: httpx.AsyncClient, key: str, n: int) -> float:
    """n requests (9 embeddings : 1 short chat), 4 at a time; returns seconds."""
    h = {"Authorization": f"Bearer {key}"}
    sem = asyncio.Semaphore(4)

    async def one(i: int) -> None:
        async with sem:
            if i % 10 == 9:
                body = {
                    "model": CHAT.name,
                    "messages": [{"role": "user", "content": f"hi {i}"}],
                    "max_tokens": 2,
                }
                r = await http.post("/v1/chat/completions", json=body, headers=h)
            else:
                r = await http.post(
                    "/v1/embeddings", json={"model": EMBED.name, "input": f"text {i}"}, headers=h
                )
            r.raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    threads = CHAT.n_threads or (os.cpu_count() or 1)  # what tollway's llama_cpp backend uses
    llm, st = raw_models(threads)
    # Every call walks the full charge path: free allocation first, then prepaid credit.
    with serve(tmp) as srv:
        token = admin_token(tmp)
        async with httpx.AsyncClient(base_url=srv.url, timeout=300) as http:
            key = await setup_customer(http, token)
            # Warm both sides (load models, fill caches) before measuring.
            raw_generate(llm, "hello", 4)
            await api_generate(http, key, "hello", 4)
            if not a.generation_first:
                st.encode(TEXTS, batch_size=32)
                await http.post(
                    "/v1/embeddings",
                    json={"model": EMBED.name, "input": TEXTS},
                    headers={"Authorization": f"Bearer {key}"},
                )

            gen: dict[str, list[float]] = {"raw_tps": [], "api_tps": [], "raw_ttft": [], "api_ttft": []}
            for rnd in range(a.rounds):
                for p in PROMPTS:
                    order = ("raw", "api") if rnd % 2 == 0 else ("api", "raw")
                    for side in order:
                        await asyncio.sleep(a.settle)  # let the other side's compute threads go idle
                        if side == "raw":
                            n, s, ttft = raw_generate(llm, p, a.max_tokens)
                        else:
                            n, s, ttft = await api_generate(http, key, p, a.max_tokens)
                        gen[f"{side}_tps"].append(n / s)
                        gen[f"{side}_ttft"].append(ttft)
            overhead_ns = [int((x - y) * 1e9) for x, y in zip(gen["api_ttft"], gen["raw_ttft"], strict=True)]

            st.encode(TEXTS, batch_size=32)
            await http.post(
                "/v1/embeddings",
                json={"model": EMBED.name, "input": TEXTS},
                headers={"Authorization": f"Bearer {key}"},
            )
            rss_loaded = rss_mb(srv.pid)
            emb: dict[str, list[float]] = {"raw": [], "api": []}
            h = {"Authorization": f"Bearer {key}"}
            for i in range(a.embed_rounds):
                for side in ("raw", "api") if i % 2 == 0 else ("api", "raw"):
                    await asyncio.sleep(a.settle)
                    t0 = time.perf_counter()
                    if side == "raw":
                        st.encode(TEXTS, batch_size=32)
                    else:
                        body = {"model": EMBED.name, "input": TEXTS, "encoding_format": "base64"}
                        (await http.post("/v1/embeddings", json=body, headers=h)).raise_for_status()
                    emb[side].append(len(TEXTS) / (time.perf_counter() - t0))

            # Warm up first (allocator arenas, SQLite page caches, the request shapes),
            # then measure growth over the next a.requests.
            rss_cold = rss_mb(srv.pid)
            if a.warmup_requests:
                await churn(http, key, a.warmup_requests)
            rss_before = rss_mb(srv.pid)
            series = [{"requests": 0, "rss_mb": rss_before["VmRSS"]}]
            churn_s = 0.0
            done = 0
            while done < a.requests:
                step = min(a.rss_every or a.requests, a.requests - done)
                churn_s += await churn(http, key, step)
                done += step
                series.append({"requests": done, "rss_mb": rss_mb(srv.pid)["VmRSS"]})
            rss_after = rss_mb(srv.pid)

    med = statistics.median
    return {
        "command": "python bench/inference.py" + (" --quick" if a.quick else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(llama_threads=threads, torch_threads=EMBED.n_threads or "default"),
        "model": {
            "chat": CHAT.name,
            "embeddings": EMBED.name,
            "max_tokens": a.max_tokens,
            "prompts": len(PROMPTS),
        },
        "startup": {"ready_s": srv.ready_s},
        "generation": {
            "raw_tokens_per_s": round(med(gen["raw_tps"]), 2),
            "api_tokens_per_s": round(med(gen["api_tps"]), 2),
            "ratio": round(med(gen["api_tps"]) / med(gen["raw_tps"]), 3),
            "samples": len(gen["raw_tps"]),
        },
        "ttft_ms": {
            "raw_p50": round(med(gen["raw_ttft"]) * 1000, 3),
            "api_p50": round(med(gen["api_ttft"]) * 1000, 3),
            "overhead": dist(overhead_ns, 1e6),
        },
        "embeddings": {
            "batch": len(TEXTS),
            "raw_per_s": round(med(emb["raw"]), 1),
            "api_per_s": round(med(emb["api"]), 1),
            "ratio": round(med(emb["api"]) / med(emb["raw"]), 3),
        },
        "memory": {
            "rss_both_models_loaded_mb": rss_loaded["VmRSS"],
            "warmup_requests": a.warmup_requests,
            "rss_before_warmup_mb": rss_cold["VmRSS"],
            "requests": a.requests,
            "growth_mb": round(rss_after["VmRSS"] - rss_before["VmRSS"], 1),
            "churn_seconds": round(churn_s, 1),
            "rss_before_mb": rss_before["VmRSS"],
            "rss_after_mb": rss_after["VmRSS"],
            "peak_mb": rss_after["VmHWM"],
            "series": series,
        },
    }


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        ("generation tokens/s, API / raw", r["generation"]["ratio"], 0.95, True),
        ("streaming TTFT overhead p50 (ms)", r["ttft_ms"]["overhead"]["p50"], 5, False),
        ("embeddings/s at batch 32, API / raw", r["embeddings"]["ratio"], 0.9, True),
        ("RSS with both models loaded (MB)", r["memory"]["rss_both_models_loaded_mb"], 1536, False),
        ("start-up to first request (s)", r["startup"]["ready_s"], 2, False),
        # "Does not grow": within 1% of RSS over the measured requests, after warm-up.
        (
            f"RSS growth over {r['memory']['requests']} requests after warm-up (MB)",
            r["memory"]["growth_mb"],
            round(r["memory"]["rss_before_mb"] * 0.01, 1),
            False,
        ),
    ]
    return [{"name": n, "measured": m, "target": t, "pass": m >= t if hi else m <= t} for n, m, t, hi in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--embed-rounds", type=int, default=20)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--warmup-requests", type=int, default=2_500, help="requests before RSS is measured")
    p.add_argument("--rss-every", type=int, default=2_500, help="sample the server's RSS every N requests")
    p.add_argument("--settle", type=float, default=0.3, help="pause (s) before each measurement")
    p.add_argument(
        "--generation-first",
        action="store_true",
        help="measure generation before either process has run torch (embeddings) at all",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.quick:
        a.rounds, a.max_tokens, a.embed_rounds, a.requests, a.warmup_requests = 1, 16, 3, 200, 100
    with tempfile.TemporaryDirectory(prefix="tollway-bench-") as d:
        res = asyncio.run(run(a, Path(d)))
    res["targets"] = targets(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    g, e, m = res["generation"], res["embeddings"], res["memory"]
    print(f"generation: raw {g['raw_tokens_per_s']} tok/s, API {g['api_tokens_per_s']}, ratio {g['ratio']}")
    t = res["ttft_ms"]
    print(f"ttft p50: raw {t['raw_p50']} ms, API {t['api_p50']} ms, overhead {t['overhead']}")
    print(f"embeddings: raw {e['raw_per_s']}/s, API {e['api_per_s']}/s, ratio {e['ratio']}")
    print(
        f"memory: loaded {m['rss_both_models_loaded_mb']} MB; "
        f"{m['requests']} requests: {m['rss_before_mb']} -> {m['rss_after_mb']} MB"
    )
    for t in res["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
