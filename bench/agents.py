"""Agents: per-turn overhead, and many concurrent sessions without a message
lost or reordered.

    .venv/bin/python bench/agents.py

1. **Overhead** (in process, SQLite, uvloop): turns through
   ``rt.agents.send`` against the fast stand-in model (bench/agent_model.py,
   a real HTTP server in another process). Each turn reports its wall time
   (after the session's lock is taken) and the time spent in model calls
   (each from the reservation to its settled charge, including embeddings
   for retrieval) and in the tool's HTTP call; overhead = wall - model -
   tool: loading the session, guards, vector search, checking and logging
   the tool call, writing the turn. Scenarios: plain, with retrieval (top-3
   of 60 chunks, real all-MiniLM-L6-v2), with one tool call (an HTTP
   endpoint of the stand-in's process).
2. **Concurrency** (a real ``tollway serve`` on SQLite, over HTTP): 100
   sessions x 10 turns; each session sends its turns one after another (a
   user waits for the answer), all sessions at once. Then every session's
   messages are read back and checked: 10 user messages in the order sent,
   each followed by its own answer. Side by side, the same number of
   ``/v1/chat/completions`` calls to the same stand-in at the same
   concurrency (the ratio is the cost of a durable agent turn over a bare
   chat call).

Writes bench/results/agents.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import admin_token, dist, machine, serve
from threaded import free_port
from tollway.inference.config import default_models
from tollway.inference.service import Caller
from tollway.runtime import Runtime
from tollway.settings import Settings

RESULTS = Path(__file__).parent / "results" / "agents.json"
HERE = Path(__file__).resolve().parent


def start_model() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "agent_model.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.post(url + "/chat/completions", json={"messages": []}, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the stand-in model did not start")


def model_entry(url: str) -> dict[str, Any]:
    return {
        "name": "agent-model",
        "task": "chat",
        "backend": "openai",
        "base_url": url,
        "n_ctx": 8192,
        "neurons_per_m_input": 100_000,
        "neurons_per_m_output": 200_000,
    }


def definition(tools_url: str, **over: Any) -> dict[str, Any]:
    return {
        "name": "support",
        "model": "agent-model",
        "system_prompt": "You are a support agent.",
        "tools": [
            {
                "name": "order_status",
                "url": tools_url + "/orders/{order_id}",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                },
                "rate_limit_per_minute": 0,
            }
        ],
        **over,
    }


async def overhead(model_url: str, tools_url: str, turns: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        owner = "cus_bench_kb"
        defs = [
            definition(tools_url),
            definition(
                tools_url, name="retrieval", tools=[], retrieval={"index": "kb", "owner": owner, "top_k": 3}
            ),
        ]
        settings = Settings.model_validate(
            {
                "database": {"url": f"sqlite:///{tmp}/t.db"},
                "models": [*(m.model_dump() for m in default_models()), model_entry(model_url)],
                "agents": {"tool_allow": ["127.0.0.1/32"], "definitions": defs},
                "vectors": {"path": f"{tmp}/vectors"},
            }
        )
        rt = Runtime.build(settings)
        await rt.migrate()
        c = await rt.customers.create("Bench")
        await rt.ledger.transfer("sys_funding", c.account_id, 10**12)
        caller = Caller(c.id, c.account_id)
        o = await rt.customers.create("KB", id=owner)
        await rt.ledger.transfer("sys_funding", o.account_id, 10**12)
        from tollway.agents.memory import ingest

        _, spec = await rt.agents.registry.latest("retrieval")
        docs = [
            {"id": f"doc{i}", "text": f"Topic {i}: " + "lorem ipsum dolor sit amet " * 25} for i in range(20)
        ]
        await ingest(rt.vectors, rt.inference, Caller(o.id, o.account_id), spec, docs)
        for label, agent, text in (
            ("plain", "support", "hello, how are you?"),
            ("retrieval", "retrieval", "tell me about topic 7"),
            ("tool_call", "support", "where is order A1001?"),
        ):
            for w in range(3):  # warm-up (connections, the embeddings model)
                await rt.agents.create_session(c.id, agent, f"warm-{label}-{w}")
                await rt.agents.send(caller, agent, f"warm-{label}-{w}", text)
            total, model, tool, over = [], [], [], []
            for i in range(turns):
                sid = f"{label}-{i % 20}"
                if i < 20:
                    await rt.agents.create_session(c.id, agent, sid)
                r = await rt.agents.send(caller, agent, sid, text)
                u = r["usage"]
                tool_us = sum(c["latency_us"] for c in r["tool_calls"])
                total.append(u["latency_us"] * 1000)
                model.append(u["model_us"] * 1000)
                tool.append(tool_us * 1000)
                over.append((u["latency_us"] - u["model_us"] - tool_us) * 1000)
            out[label] = {
                "turns": turns,
                "overhead_ms": dist(over, 1e6),
                "model_ms": dist(model, 1e6),
                "tool_http_ms": dist(tool, 1e6),
                "turn_ms": dist(total, 1e6),
            }
            print(label, json.dumps(out[label]), flush=True)
        await rt.close()
    return out


async def concurrency(model_url: str, sessions: int, turns: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        toml = f'''
[agents]
definitions = [{{ name = "echo", model = "agent-model", system_prompt = "Echo." }}]

[[models]]
name = "agent-model"
task = "chat"
backend = "openai"
base_url = "{model_url}"
n_ctx = 8192
neurons_per_m_input = 100000
neurons_per_m_output = 200000
'''
        with serve(tmp, edit=lambda t: t.replace("[[models]]", toml.strip() + "\n\n[[models]]", 1)) as srv:
            admin = {"Authorization": f"Bearer {admin_token(tmp)}"}
            limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
            async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as h:
                cus = (await h.post("/admin/customers", json={"name": "Bench"}, headers=admin)).json()
                await h.post(
                    "/admin/ledger/transfers",
                    json={
                        "debit_account_id": "sys_funding",
                        "credit_account_id": cus["account_id"],
                        "amount": 10**12,
                    },
                    headers=admin,
                )
                key = (await h.post("/admin/keys", json={"customer_id": cus["id"]}, headers=admin)).json()[
                    "key"
                ]
                auth = {"Authorization": f"Bearer {key}"}
                for s in range(sessions):
                    r = await h.post("/v1/agents/echo/sessions", json={"id": f"s{s}"}, headers=auth)
                    assert r.status_code == 201, r.text
                errors = 0

                async def user(s: int) -> None:
                    nonlocal errors
                    for t in range(turns):
                        r = await h.post(
                            f"/v1/agents/echo/sessions/s{s}/messages",
                            json={"content": f"s{s} m{t}"},
                            headers=auth,
                        )
                        if r.status_code != 200:
                            errors += 1

                t0 = time.perf_counter()
                await asyncio.gather(*(user(s) for s in range(sessions)))
                agent_s = time.perf_counter() - t0

                lost = reordered = 0
                for s in range(sessions):
                    msgs = (
                        await h.get(f"/v1/agents/echo/sessions/s{s}/messages?limit=1000", headers=auth)
                    ).json()["data"]
                    users = [m["content"] for m in msgs if m["role"] == "user"]
                    want = [f"s{s} m{t}" for t in range(turns)]
                    lost += len(set(want) - set(users))
                    if users != want or [m["content"] for m in msgs[1::2]] != [f"echo: {u}" for u in want]:
                        reordered += 1

                async def chat(s: int) -> None:
                    for t in range(turns):
                        r = await h.post(
                            "/v1/chat/completions",
                            json={
                                "model": "agent-model",
                                "messages": [{"role": "user", "content": f"s{s} m{t}"}],
                            },
                            headers=auth,
                        )
                        assert r.status_code == 200, r.text

                t0 = time.perf_counter()
                await asyncio.gather(*(chat(s) for s in range(sessions)))
                chat_s = time.perf_counter() - t0
    n = sessions * turns
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "turns": n,
        "errors": errors,
        "lost_messages": lost,
        "sessions_out_of_order": reordered,
        "agent_turns_per_s": round(n / agent_s, 1),
        "chat_completions_per_s": round(n / chat_s, 1),
        "agent_over_chat_time": round(agent_s / chat_s, 2),
        "server": srv.cmd,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--session-turns", type=int, default=10)
    args = ap.parse_args()
    proc, model_url = start_model()
    try:
        res = {"overhead": await overhead(model_url, model_url.removesuffix("/v1"), args.turns)}
        res["concurrency"] = await concurrency(model_url, args.sessions, args.session_turns)
        print("concurrency", json.dumps(res["concurrency"]), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    result = {
        "bench": "agents",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/agents.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "results": res,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
