"""A quick A/B of tollway builds through the gateway, interleaved at one concurrency.

    .venv/bin/python bench/gateway_ab.py --build head --build before=/tmp/rev/REV/src
    .venv/bin/python bench/gateway_ab.py --build full --build normal=:normal --concurrency 64

`bench/gateway.py` is the run of record (every setup, three concurrency levels,
LiteLLM); this is the light tool for deciding whether one change pays: the same
mock upstream and chat completion, two or more `tollway serve`s up at once, and
wrk driving each in turn for ``--rounds`` rounds (the order reversed every other
round, so the machine's drift over minutes hits all alike). Reported per build:
the median over rounds of the p50, of req/s and of the server's CPU time per
request (user + system, all threads, from /proc: steadier than latency on a
noisy machine), with every round's values.

A build is ``NAME[=SRC][:CONFIG]``: SRC is another revision's ``src/``
(``git archive REV src | tar -x -C /tmp/rev/REV``; none: this checkout), CONFIG
is ``full`` (the default, durable), ``normal`` (SQLite ``NORMAL``) or ``fast``
(``acknowledge = "fast"``). Writes bench/results/gateway_ab.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import admin_token, cpu_seconds, positive, serve, speed_probe, write_results
from gateway import (
    HERE,
    check,
    fast_config,
    free_port,
    gateway_config,
    lua,
    normal_config,
    setup_customer,
    spawn,
    speed_line,
    tollway_toml,
    wrk,
)

CONFIGS = {"full": gateway_config, "normal": normal_config, "fast": fast_config}
RESULTS = HERE / "results" / "gateway_ab.json"


def parse_build(text: str) -> tuple[str, Path | None, str]:
    """``NAME[=SRC][:CONFIG]`` → (name, src or None, config)."""
    head, _, config = text.partition(":")
    name, _, src = head.partition("=")
    config = config or "full"
    if not name or config not in CONFIGS:
        raise argparse.ArgumentTypeError(f"a build is NAME[=SRC][:{'|'.join(CONFIGS)}], not {text!r}")
    if src and not (Path(src) / "tollway").is_dir():
        raise argparse.ArgumentTypeError(f"{src} holds no tollway package (want a src/ directory)")
    return name, Path(src) if src else None, config


def rounds(
    targets: dict[str, tuple[str, Path, int]], n: int, conc: int, secs: float, pause: float
) -> dict[str, dict[str, list[float]]]:
    """``n`` interleaved wrk rounds: each build's p50, req/s and CPU µs a request."""
    names = list(targets)
    out: dict[str, dict[str, list[float]]] = {b: {"p50_ms": [], "rps": [], "cpu_us": []} for b in names}
    for i in range(n):
        for b in names if i % 2 == 0 else names[::-1]:
            url, script, pid = targets[b]
            time.sleep(pause)  # the previous server's background work drains
            c0 = cpu_seconds(pid)
            res = wrk(url, script, conc, 1, secs)
            cpu = (cpu_seconds(pid) - c0) / max(res["requests"], 1) * 1e6
            out[b]["p50_ms"].append(res["p50_ms"])
            out[b]["rps"].append(res["rps"])
            out[b]["cpu_us"].append(round(cpu, 1))
        print(
            f"round {i + 1}: "
            + "  ".join(f"{b} {out[b]['p50_ms'][-1]:.3f} ms {out[b]['rps'][-1]:,.0f}/s" for b in names),
            flush=True,
        )
    return out


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    speed = {"start": speed_probe(tmp)}
    port = free_port()
    upstream = f"http://127.0.0.1:{port}/v1"
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"  # the servers inherit it
    mock = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port)]
    targets: dict[str, tuple[str, Path, int]] = {}
    with ExitStack() as stack:
        env = dict(os.environ)
        stack.enter_context(spawn("mock upstream", mock, f"{upstream}/models", tmp / "mock.log", env, 30))
        for name, src, config in a.build:
            home = tmp / name
            home.mkdir()
            srv = stack.enter_context(serve(home, tollway_toml(upstream), edit=CONFIGS[config], src=src))
            headers = {"Authorization": f"Bearer {setup_customer(srv.url, admin_token(home))}"}
            url = f"{srv.url}/v1/chat/completions"
            check(name, url, headers)
            targets[name] = (url, lua(tmp / f"{name}.lua", headers), srv.pid)
            print(f"{name} up in {srv.ready_s} s ({config}{', ' + str(src) if src else ''})", flush=True)
        for url, script, _ in targets.values():
            wrk(url, script, a.concurrency, 1, a.warmup)  # warm-up, not recorded
        per = rounds(targets, a.rounds, a.concurrency, a.duration, a.pause)
        speed["end"] = speed_probe(tmp)
    return {
        "machine_speed": speed,
        "setup": {"concurrency": a.concurrency, "rounds": a.rounds, "duration_s": a.duration},
        "builds": {n: {"src": str(s) if s else "this checkout", "config": c} for n, s, c in a.build},
        "rounds": per,
        "median": {b: {k: round(statistics.median(v), 3) for k, v in m.items()} for b, m in per.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", type=parse_build, action="append", required=True, help="NAME[=SRC][:CONFIG]")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--rounds", type=positive, default=6)
    p.add_argument("--duration", type=float, default=5, help="seconds of wrk per build per round")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--pause", type=float, default=0.5, help="seconds before each point")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if len({n for n, _, _ in a.build}) != len(a.build):
        p.error("each build needs its own name")
    with tempfile.TemporaryDirectory(prefix="tollway-ab-") as d:
        res = run(a, Path(d))
    for b, m in res["median"].items():
        print(f"{b:<16} p50 {m['p50_ms']:.3f} ms  {m['rps']:,.0f} req/s  CPU {m['cpu_us']:,.0f} µs a request")
    print(speed_line(res["machine_speed"]))
    write_results(a.out, "gateway_ab", res)


if __name__ == "__main__":
    main()
