"""API-shape overhead: a plain chat completion against the same call with tools
offered, Anthropic's ``/v1/messages`` and OpenAI's ``/v1/responses`` (stored, and
with ``store: false``), through one `tollway serve`.

    .venv/bin/python bench/shapes.py [--rounds 3] [--duration 5]

One mock OpenAI upstream (bench/mock_upstream.py, a fixed answer), one tollway
(fresh `tollway init`, SQLite `FULL`, the gateway's rate limits on) with an
`openai`-backend model on the mock, one funded key. wrk at concurrency 1 sends
each shape in turn, ``--rounds`` times (interleaved, so noise hits all alike);
the p50s are the median over the rounds. What a shape adds over plain chat is
its own work: parsing, checking the tools, translating, rendering.

Writes bench/results/shapes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import Server, admin_token, machine, serve
from gateway import MODEL, free_port, gateway_config, setup_customer, spawn, tollway_toml, wrk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "shapes.json"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI = [{"role": "user", "content": "hi"}]
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 8}),
    "chat_tools": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": HI, "max_tokens": 8, "tools": [WEATHER], "tool_choice": "auto"},
    ),
    "messages": ("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 8}),
    # store defaults to true, as OpenAI's: each response is kept (one row written per request).
    "responses": ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 8}),
    "responses_nostore": (
        "/v1/responses",
        {"model": MODEL, "input": "hi", "max_output_tokens": 8, "store": False},
    ),
}


def script(path: Path, body: dict[str, Any], key: str) -> Path:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    lines = ['wrk.method = "POST"', f"wrk.body = [[{json.dumps(body)}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def served_with_mock(tmp: Path) -> Iterator[tuple[Server, Path]]:
    """A `tollway serve` (its home under ``tmp``, rate limits on) in front of the mock upstream."""
    mock_port = free_port()
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    mock = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
    with spawn("mock upstream", mock, f"{upstream}/models", tmp / "mock.log", env, 30):
        home = tmp / "tollway"
        home.mkdir()
        with serve(home, tollway_toml(upstream), edit=gateway_config) as srv:
            yield srv, home


def c1_rounds(
    points: dict[str, tuple[str, Path]], a: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """wrk at concurrency 1 on each (url, script), interleaved, ``a.rounds`` times
    (after a warm-up): p50 ms and req/s per round."""
    for url, sc in points.values():  # warm-up, not recorded
        wrk(url, sc, 4, 1, a.warmup)
    p50: dict[str, list[float]] = {n: [] for n in points}
    rps: dict[str, list[float]] = {n: [] for n in points}
    for i in range(a.rounds):
        for n, (url, sc) in points.items():
            res = wrk(url, sc, 1, 1, a.duration)
            p50[n].append(res["p50_ms"])
            rps[n].append(res["rps"])
            print(f"round {i + 1} {n:<11} p50 {res['p50_ms']:.3f} ms  {res['rps']:.0f} req/s", flush=True)
    return p50, rps


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    with served_with_mock(tmp) as (srv, home):
        key = setup_customer(srv.url, admin_token(home))
        points = {
            n: (srv.url + path, script(tmp / f"{n}.lua", body, key)) for n, (path, body) in SHAPES.items()
        }
        p50, rps = c1_rounds(points, a)
    med = {n: round(statistics.median(v), 3) for n, v in p50.items()}
    more = {n: round(med[n] - med["chat"], 3) for n in SHAPES if n != "chat"}
    return {
        "command": f"python bench/shapes.py --rounds {a.rounds} --duration {a.duration:g}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "p50_ms_per_round": p50,
        "rps_per_round": rps,
        "p50_ms_median": med,
        "more_than_chat_p50_ms": more,
        "targets": [
            {"name": f"{n}: added p50 over plain chat (ms)", "measured": v, "target": 0.3, "pass": v <= 0.3}
            for n, v in more.items()
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollway-shapes-") as d:
        res = run(a, Path(d))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps(
            {"p50_ms_median": res["p50_ms_median"], "more_than_chat_p50_ms": res["more_than_chat_p50_ms"]}
        )
    )
    for t in res["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target ≤ {t['target']})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
