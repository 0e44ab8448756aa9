"""Provisioning benchmark: deploy-to-live, Host-routed throughput against the
same app served directly by uvicorn, and the wake time of a deployment
scaled to zero.

    .venv/bin/python bench/provision.py [--quick]

A real ``tollway serve`` (SQLite) with its edge on; an agent token of a
funded wallet deploys through ``POST /v1/broker/provision/deployments``.

1. **Deploy to first response**: each deploy uploads a new version of a small
   ASGI app (a zip, base64); timed from the POST until the edge answers with
   the new version's body (the POST returns once the version is live: paid,
   unpacked, handed to a warm sandboxed worker and healthy). Deploys are 1 s
   apart (the warm workers are ready), then a burst of 10 back to back. Beside it, the same app
   started the plain way (a fresh ``python -m uvicorn``), until it answers.
2. **Requests/s through Host routing**: ``wrk`` against the edge (Host:
   <name>.tollway.localhost) and against the same app served directly by
   ``uvicorn`` (httptools, uvloop, one process), alternated, same run.
3. **Wake time**: ``idle_seconds = 1``; after the worker is scaled to zero,
   the time of the next request through the edge (it waits for the wake).

Writes bench/results/provision.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import admin_token, dist, machine, serve

RESULTS = Path(__file__).parent / "results" / "provision.json"
APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"%s"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


def bundle(tag: str) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", APP % tag.encode().decode())
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def call(
    method: str, url: str, body: Any = None, token: str = "", host: str | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if host:
        req.add_header("host", host)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(port: int, host: str) -> tuple[int, bytes]:
    """One request over a fresh connection (http.client sends our Host header as is)."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        c.close()


def wrk(url: str, host: str | None, seconds: int, conns: int) -> float:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or non2xx:
        raise RuntimeError(f"wrk: {out}")
    return float(m.group(1))


def plain_uvicorn(appdir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--lifespan",
        "off",
        "--no-server-header",
        "--no-date-header",
    ]  # fmt: skip  (as the deployments' workers)
    return subprocess.Popen(cmd, cwd=appdir)


def wait_up(port: int, host: str, deadline_s: float = 30) -> None:
    t0 = time.monotonic()
    while get(port, host)[0] != 200:
        if time.monotonic() - t0 > deadline_s:
            raise RuntimeError(f"nothing answered on {port}")
        time.sleep(0.002)


def deploy(url: str, token: str, tag: str) -> tuple[int, bytes]:
    body = {"name": "bench", "entrypoint": "app:app", "bundle": bundle(tag)}
    return call("POST", url + "/v1/broker/provision/deployments", body, token)


def agent(url: str, admin: str) -> str:
    """A funded wallet's agent token."""
    _, raw = call("POST", url + "/admin/wallets", {"owner": "bench"}, admin)
    wal = json.loads(raw)
    call(
        "POST", f"{url}/admin/wallets/{wal['id']}/topup", {"amount": "$1000", "source": "sys_funding"}, admin
    )
    _, raw = call("POST", f"{url}/admin/wallets/{wal['id']}/tokens", {"limits": {}}, admin)
    token: str = json.loads(raw)["token"]
    return token


def throughput(edge_port: int, host: str, appdir: Path, secs: int, rounds: int) -> dict[str, Any]:
    """wrk through the edge and against the same app served by uvicorn directly, alternated."""
    port = free_port()
    direct = plain_uvicorn(appdir, port)
    try:
        wait_up(port, "x")
        for _ in range(2):  # warm both
            wrk(f"http://127.0.0.1:{port}/", None, 1, 32)
            wrk(f"http://127.0.0.1:{edge_port}/", host, 1, 32)
        runs: dict[str, list[float]] = {"direct": [], "edge": []}
        for _ in range(rounds):
            runs["direct"].append(wrk(f"http://127.0.0.1:{port}/", None, secs, 32))
            runs["edge"].append(wrk(f"http://127.0.0.1:{edge_port}/", host, secs, 32))
    finally:
        direct.terminate()
        direct.wait()
    best = {k: max(v) for k, v in runs.items()}
    return {
        "wrk": f"wrk -t1 -c32 -d{secs}s, {rounds} times each, alternated; best of each",
        "rps": runs,
        "edge_rps": best["edge"],
        "direct_uvicorn_rps": best["direct"],
        "ratio": round(best["edge"] / best["direct"], 3),
        "target_ratio": 0.7,
    }


def deploys(
    url: str, token: str, edge_port: int, host: str, n: int, pause_s: float, first: str
) -> dict[str, Any]:
    """``n`` deploys (after one more that starts the sandboxes), each timed until the edge answers with it."""
    total, post, live = [], [], []
    for i in range(n + 1):
        tag = f"{first}{i}"
        t0 = time.perf_counter_ns()
        st, raw = deploy(url, token, tag)
        t1 = time.perf_counter_ns()
        if st != 201:
            raise RuntimeError(raw.decode())
        while get(edge_port, host)[1] != tag.encode():
            if time.perf_counter_ns() - t1 > 30e9:
                raise RuntimeError(f"the edge never answered with {tag}: {get(edge_port, host)}")
        t2 = time.perf_counter_ns()
        if i:  # the first deploy also starts the warm workers
            post.append(t1 - t0)
            total.append(t2 - t0)
            live.append(int(json.loads(raw)["live_ms"] * 1e6))
        time.sleep(pause_s)
    return {
        "deploys": n,
        "pause_between_s": pause_s,
        "deploy_to_first_response_ms": dist(total, 1e6),
        "post_until_live_ms": dist(post, 1e6),
        "unpack_assign_healthy_ms": dist(live, 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_deploys, n_burst, n_fresh, n_wakes, secs, rounds = (
        (3, 3, 2, 2, 3, 1) if args.quick else (30, 10, 8, 12, 10, 3)
    )
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    edge_port = free_port()

    def edit(text: str) -> str:
        return text.replace("edge_port = 8788", f"edge_port = {edge_port}").replace(
            "idle_seconds = 300", "idle_seconds = 1"
        )

    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s, serve(Path(tmp_s), edit=edit) as srv:
        tmp = Path(tmp_s)
        admin = admin_token(tmp)
        _, raw = call("POST", srv.url + "/admin/wallets", {"owner": "bench"}, admin)
        wal = json.loads(raw)
        call(
            "POST",
            f"{srv.url}/admin/wallets/{wal['id']}/topup",
            {"amount": "$1000", "source": "sys_funding"},
            admin,
        )
        _, raw = call("POST", f"{srv.url}/admin/wallets/{wal['id']}/tokens", {"limits": {}}, admin)
        token = json.loads(raw)["token"]
        host = "bench.tollway.localhost"

        # 1. deploy to first response: spaced (an agent deploys, uses it, deploys again; the warm
        # sandboxes are ready), then a burst of back-to-back deploys (they outrun the warm-up)
        res["deploy"] = deploys(srv.url, token, edge_port, host, n_deploys, pause_s=1.0, first="v")
        res["deploy_burst"] = deploys(srv.url, token, edge_port, host, n_burst, pause_s=0.0, first="b")
        print("deploy_burst", json.dumps(res["deploy_burst"]))
        appdir = tmp / "plainapp"
        appdir.mkdir()
        (appdir / "app.py").write_text(APP % "plain")
        fresh = []
        for _ in range(n_fresh):
            port = free_port()
            t0 = time.perf_counter_ns()
            p = plain_uvicorn(appdir, port)
            wait_up(port, "x")
            fresh.append(time.perf_counter_ns() - t0)
            p.terminate()
            p.wait()
        res["deploy"]["fresh_uvicorn_process_ms"] = dist(fresh, 1e6)
        print("deploy", json.dumps(res["deploy"]))

        # 2. throughput: the edge vs uvicorn directly, alternated
        res["throughput"] = throughput(edge_port, host, appdir, secs, rounds)
        res["throughput"]["edge"] = "connections handed to the worker (edge_handoff = true, the default)"
        print("throughput", json.dumps(res["throughput"]))

        # 3. wake time after scale to zero (idle_seconds = 1)
        wakes, warm = [], []
        for _ in range(n_wakes):
            time.sleep(2.5)  # idle past 1 s, and past the idle sweep (every 0.25 s)
            t0 = time.perf_counter_ns()
            st, body = get(edge_port, host)
            wakes.append(time.perf_counter_ns() - t0)
            assert st == 200, (st, body)
            t0 = time.perf_counter_ns()
            get(edge_port, host)
            warm.append(time.perf_counter_ns() - t0)
        res["wake"] = {
            "wakes": n_wakes,
            "wake_request_ms": dist(wakes, 1e6),
            "warm_request_ms": dist(warm, 1e6),
        }
        print("wake", json.dumps(res["wake"]))

    # 2b. the same with the edge relaying bytes (edge_handoff = false), same run
    edge_port = free_port()
    with tempfile.TemporaryDirectory() as tmp_s, serve(Path(tmp_s), edit=lambda t: edit(t).replace(
        "edge_handoff = true", "edge_handoff = false")) as srv:  # fmt: skip
        tmp = Path(tmp_s)
        token = agent(srv.url, admin_token(tmp))
        st, raw = deploy(srv.url, token, "relay")
        assert st == 201, raw
        appdir = tmp / "plainapp"
        appdir.mkdir()
        (appdir / "app.py").write_text(APP % "plain")
        res["throughput_relay"] = throughput(edge_port, "bench.tollway.localhost", appdir, secs, rounds)
        res["throughput_relay"]["edge"] = "bytes relayed by the edge (edge_handoff = false)"
        print("throughput_relay", json.dumps(res["throughput_relay"]))

    result = {
        "benchmark": "provision",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": "bench/provision.py" + (" --quick" if args.quick else ""),
        **res,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
