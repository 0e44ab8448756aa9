"""The edge's paywall: requests/s of a deployment behind an agent's x402 rule,
with a valid payment per request, against the same deployment served by the
edge without a rule, in one run (issue 22 §2; target: paid >= 0.7 x unpriced).

    .venv/bin/python bench/paywall_edge.py [--quick]

A real ``tollway serve`` (SQLite, the edge on); an agent token deploys the
same small ASGI app twice (``free`` and ``paid``), and prices ``paid`` with
``POST /v1/x402/rules`` ($0.001 a request, to its wallet). ``wrk`` then
alternates between:

- **unpriced**: ``Host: free.tollway.localhost``, the edge's usual path (the
  connection handed to the worker);
- **relayed**: ``Host: paid.tollway.localhost``, a route no rule prices: the
  paywall's HTTP relay to the worker, without a payment (the cost of serving
  the host at the HTTP level);
- **paid**: ``GET /paid`` on ``paid.tollway.localhost``, each request carrying its own
  pre-signed EIP-3009 authorization: the edge serves the connection through
  the paywall (402 rules, verify, claim, forward to the worker, settle the
  wallet's earnings and the operator's fee as one ledger chain).

Writes bench/results/paywall_edge.json and prints a row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from x402 import fund, lua_paid, presign

from common import admin_token, machine, serve
from gateway import free_port, wrk
from provision import agent, bundle, call

RESULTS = Path(__file__).parent / "results" / "paywall_edge.json"
APPS = "tollway.localhost"


def lua(path: Path, host: str, route: str) -> Path:
    """A wrk script: ``route`` on ``host``."""
    path.write_text(
        f'local h = {{["Host"] = "{host}"}}\n'
        f'request = function() return wrk.format("GET", "{route}", h) end\n'
    )
    return path


def deploy(url: str, token: str, name: str) -> None:
    body = {"name": name, "entrypoint": "app:app", "bundle": bundle(name)}
    st, raw = call("POST", url + "/v1/broker/provision/deployments", body, token)
    if st != 201:
        raise RuntimeError(raw.decode())


def price(url: str, token: str, host: str) -> dict[str, Any]:
    body = {"name": "bench", "host": host, "path": "/paid", "price": "$0.001"}
    st, raw = call("POST", url + "/v1/x402/rules", body, token)
    if st != 201:
        raise RuntimeError(raw.decode())
    out: dict[str, Any] = json.loads(raw)
    return out


def required_at(edge: str, host: str) -> dict[str, Any]:
    r = httpx.get(edge + "/paid", headers={"host": host}, timeout=30)
    if r.status_code != 402:
        raise RuntimeError(f"expected 402 from the priced host, got {r.status_code}: {r.text[:300]}")
    import base64

    out: dict[str, Any] = json.loads(base64.b64decode(r.headers["payment-required"]))
    return out


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    edge_port = free_port()
    os.environ["BENCH_WALLET_KEY"] = secrets.token_hex(32)  # serve() passes no TOLLWAY_* variable

    def edit(text: str) -> str:
        text = text.replace("edge_port = 8788", f"edge_port = {edge_port}")
        return text.replace('key_env = "TOLLWAY_WALLET_KEY"', 'key_env = "BENCH_WALLET_KEY"')

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {"unpriced": [], "relayed": [], "paid": []}
    with serve(tmp, edit=edit) as srv:
        admin = admin_token(tmp)
        token = agent(srv.url, admin)
        for name in ("free", "paid"):
            deploy(srv.url, token, name)
        made = price(srv.url, token, f"paid.{APPS}")
        time.sleep(2.5)  # every process has the rule (Paywall.watch)
        edge = f"http://127.0.0.1:{edge_port}"
        required = required_at(edge, f"paid.{APPS}")
        n = int(a.max_rps * a.duration * (a.rounds + 1) * 1.3) + 100
        hfile = tmp / "payments.txt"
        payer, sign_ms = presign(required, n, hfile)
        fund(srv.url, admin, payer.address, str(n * 1000 + 10**6))
        free_lua = lua(tmp / "free.lua", f"free.{APPS}", "/")
        wrk(edge + "/", free_lua, a.conns, 1, 1)  # warm
        paid_lua = lua_paid(tmp / "paid.lua", hfile, "/paid", f"paid.{APPS}")
        relay_lua = lua(tmp / "relay.lua", f"paid.{APPS}", "/")
        done = 0
        for _ in range(a.rounds):
            runs["unpriced"].append(wrk(edge + "/", free_lua, a.conns, 1, a.duration))
            runs["relayed"].append(wrk(edge + "/", relay_lua, a.conns, 1, a.duration))
            # each round reads the payments from the top: shift the file past the ones spent
            lines = hfile.read_text().splitlines()[done:]
            hfile.write_text("\n".join(lines) + "\n")
            res = wrk(edge + "/", paid_lua, a.conns, 1, a.duration)
            done = res["requests"] + a.conns  # and any in flight when wrk stopped
            if done > len(lines):
                raise RuntimeError("ran out of pre-signed payments: raise --max-rps")
            runs["paid"].append(res)
        me = httpx.get(
            srv.url + "/v1/wallet", headers={"authorization": f"Bearer {token}"}, timeout=30
        ).json()
    best = {k: max(r["rps"] for r in v) for k, v in runs.items()}
    ratio = round(best["paid"] / best["unpriced"], 3)
    return {
        "command": "python bench/paywall_edge.py" + (" --quick" if a.quick else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_avg_before=load_before),
        "setup": {
            "wrk": f"wrk -t1 -c{a.conns} -d{a.duration:g}s, {a.rounds} rounds alternated; best of each",
            "price": "$0.001 a request, to the agent's wallet (5% to sys_fees)",
            "rule": made["id"],
            "signing_ms_per_authorization": round(sign_ms, 3),
        },
        "runs": runs,
        "best_rps": best,
        "paid_over_unpriced": ratio,
        "relayed_over_unpriced": round(best["relayed"] / best["unpriced"], 3),
        "paid_over_relayed": round(best["paid"] / best["relayed"], 3),
        "target": 0.7,
        "pass": ratio >= 0.7,
        "wallet_earnings": me.get("earnings"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s, one round, c=8 (a smoke run)")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--max-rps", type=float, default=3000, help="pre-sign enough payments for this rate")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.quick:
        a.duration, a.rounds, a.conns, a.max_rps = 2, 1, 8, 1500
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    subprocess.run(["wrk", "-v"], capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        res = run(a, Path(d))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    b = res["best_rps"]
    verdict = "PASS" if res["pass"] else "MISS"
    print(f"[{verdict}] paid / unpriced req/s: {res['paid_over_unpriced']} (target 0.7)")
    print(f"wrote {a.out}\n\n--- suggested docs/benchmarks.md row ---\n")
    print(
        f"| deployment behind an agent's x402 rule (paid, at the edge) | {b['paid']:,.0f} req/s | "
        f"unpriced {b['unpriced']:,.0f} req/s, relayed (free route, same host) {b['relayed']:,.0f} req/s | "
        f"{res['paid_over_unpriced']}x (target ≥ 0.7x) |"
    )


if __name__ == "__main__":
    main()
