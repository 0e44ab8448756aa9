"""The AI binding's cost: a chat completion through a deployment's socket
against the same call made on tollway's ASGI app directly.

    .venv/bin/python bench/ai_binding.py [--requests 2000] [--concurrency 1,8] [--quick]

One process: tollway's runtime (SQLite, a funded customer, one ``openai``-backend
model pointing at bench/mock_upstream.py, a subprocess) and its app; a binding
socket made as for a worker (no sandbox needed: the socket is the same). Both
setups walk the whole charge path; the client runs in the same event loop for
both, so the difference is what the binding adds: the Unix socket, uvicorn's
HTTP/1.1 parser, the checks and the credential swap.

- **direct**: tollway's app behind the same uvicorn HTTP/1.1 protocol on a
  127.0.0.1 TCP port (what ``tollway serve`` runs), called with the key.
- **binding**: the deployment's socket (``AsyncHTTPTransport(uds=...)``), no key.

The binding's credential is the customer's API key here (an agent token of
the deployment's wallet in production, once agent tokens may call the AI
routes). Writes bench/results/ai_binding.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import uvicorn.config
from uvicorn.server import ServerState

from common import dist, write_results
from tollway.api.app import create_app
from tollway.provision.workers import Worker
from tollway.runtime import Runtime
from tollway.settings import Settings

HERE = Path(__file__).parent
ADMIN = "bench-admin-token-0123456789"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _mock(port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the mock upstream did not start: {log.read_text()[-500:]}")


async def _run(c: httpx.AsyncClient, n: int, conc: int, headers: dict[str, str]) -> dict[str, Any]:
    lat: list[int] = []
    left = n

    async def one() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter_ns()
            r = await c.post("/v1/chat/completions", json=BODY, headers=headers)
            lat.append(time.perf_counter_ns() - t0)
            if r.status_code != 200:
                raise SystemExit(f"{r.status_code} {r.text}")

    t0 = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(conc)])
    wall = time.perf_counter() - t0
    return {"requests": n, "rps": round(n / wall, 1), "latency_ms": dist(lat, 1e6)}


async def main(a: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-ai-"))
    port = _free_port()
    mock = _mock(port, tmp / "mock.log")
    try:
        s = Settings.model_validate(
            {
                "database": {"url": f"sqlite:///{tmp}/tollway.db"},
                "admin": {"token": ADMIN},
                "provision": {"edge_port": 0, "data_dir": str(tmp / "prov")},
                "models": [
                    {
                        "name": "mock", "task": "chat", "backend": "openai",
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "neurons_per_m_input": 2457, "neurons_per_m_output": 18252,
                    }
                ],
            }
        )  # fmt: skip
        rt = Runtime.build(s)
        await rt.migrate()
        app = create_app(rt=rt)
        admin = {"authorization": f"Bearer {ADMIN}"}
        cfg = uvicorn.config.Config(app, lifespan="off", log_level="warning", access_log=False)
        cfg.load()
        state = ServerState()
        tcp = await asyncio.get_running_loop().create_server(
            lambda: cfg.http_protocol_class(config=cfg, server_state=state, app_state={}),  # type: ignore[call-arg]
            "127.0.0.1",
            0,
        )
        api = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
        async with httpx.AsyncClient(base_url=api, limits=httpx.Limits(max_connections=256)) as direct:
            cust = (await direct.post("/admin/customers", json={"name": "bench"}, headers=admin)).json()
            await rt.ledger.transfer("sys_funding", cust["account_id"], 10**12)
            r = await direct.post("/admin/keys", json={"customer_id": cust["id"]}, headers=admin)
            key: str = r.json()["key"]

            async def bearer(_: str) -> str:
                return key

            binding = rt.provision.ai_binding
            binding.bearer = bearer
            binding.cfg.ai_binding_concurrency = 10_000
            home = tmp / "worker"
            (home / "run").mkdir(parents=True)
            w = Worker(pid=os.getpid(), port=0, started=0.0, uid=os.getuid(), dir=home)
            env = await binding.attach("dep_bench", w, str(home / "run"))
            uds = httpx.AsyncHTTPTransport(uds=env["TOLLWAY_AI_SOCKET"])
            out: dict[str, Any] = {}
            async with httpx.AsyncClient(transport=uds, base_url="http://tollway.ai") as via:
                auth = {"authorization": f"Bearer {key}"}
                await _run(direct, 20, 1, auth)  # warm both
                await _run(via, 20, 1, {})
                for conc in a.concurrency:
                    out[f"c{conc}"] = {
                        "direct": await _run(direct, a.requests, conc, auth),
                        "binding": await _run(via, a.requests, conc, {}),
                    }
                    d, b = out[f"c{conc}"]["direct"], out[f"c{conc}"]["binding"]
                    print(
                        f"c={conc}: direct {d['rps']} req/s p50 {d['latency_ms']['p50']} ms;"
                        f" binding {b['rps']} req/s p50 {b['latency_ms']['p50']} ms"
                    )
            binding.detach(w)
        tcp.close()
        for conn in list(state.connections):
            conn.shutdown()
        await rt.close()
        return out
    finally:
        mock.kill()
        mock.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 30 requests, no results file")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.concurrency = 30, [1, 4]
    results = asyncio.run(main(args))
    if not args.quick:
        write_results(HERE / "results" / "ai_binding.json", "ai_binding", results)
