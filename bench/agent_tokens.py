"""An agent token on the AI routes against an API key: the same chat
completion, paid by the token's wallet (its limits as caps) or by the key's
customer, through one `tollway serve`; and the API key's p50 with agent tokens
supported is what bench/shapes.py's chat measures (the prefix check is one
string comparison).

    .venv/bin/python bench/agent_tokens.py [--rounds 3] [--duration 5]

The setup of bench/shapes.py (a mock OpenAI upstream, a fresh tollway, wrk at
concurrency 1, interleaved rounds); the wallet has a daily spending limit and
the token a total allowance, so every cap is reserved on each call.

Writes bench/results/agent_tokens.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from common import admin_token, machine
from gateway import MODEL, setup_customer
from shapes import HI, c1_rounds, script, served_with_mock

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "agent_tokens.json"
BODY = {"model": MODEL, "messages": HI, "max_tokens": 8}


def agent_token(url: str, admin: str) -> str:
    h = {"Authorization": f"Bearer {admin}"}
    policy = {"spending_limits": [{"amount": "$1000", "interval": "daily"}]}
    with httpx.Client(base_url=url, timeout=30) as http:
        w = http.post("/admin/wallets", json={"owner": "bench", "policy": policy}, headers=h).json()
        top = {"amount": "$100000", "source": "sys_funding"}
        http.post(f"/admin/wallets/{w['id']}/topup", json=top, headers=h).raise_for_status()
        limits = {"total_allowance": "$100000"}
        r = http.post(f"/admin/wallets/{w['id']}/tokens", json={"limits": limits}, headers=h)
        token: str = r.raise_for_status().json()["token"]
    return token


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with served_with_mock(tmp) as (srv, home):
        creds = {
            "api_key": setup_customer(srv.url, admin_token(home)),
            "agent_token": agent_token(srv.url, admin_token(home)),
        }
        url = srv.url + "/v1/chat/completions"
        for n, c in creds.items():
            r = httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {c}"}, timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"{n}: {r.status_code} {r.text}")
        p50, rps = c1_rounds({n: (url, script(tmp / f"{n}.lua", BODY, c)) for n, c in creds.items()}, a)
    med = {n: round(statistics.median(v), 3) for n, v in p50.items()}
    more = round(med["agent_token"] - med["api_key"], 3)
    return {
        "command": f"python bench/agent_tokens.py --rounds {a.rounds} --duration {a.duration:g}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "p50_ms_per_round": p50,
        "rps_per_round": rps,
        "p50_ms_median": med,
        "agent_token_more_p50_ms": more,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollway-agent-tokens-") as d:
        res = run(a, Path(d))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({"p50_ms_median": res["p50_ms_median"], "more": res["agent_token_more_p50_ms"]}))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
