"""What telemetry costs the gateway, in one run: requests/s through tollway with
telemetry off, against another revision (today's main: ``--before REV=SRC``),
with traces on at sampling 1.0 (exported over OTLP/HTTP to a collector this
script runs, which counts and drops them), and with JSON logs (and the access
log) on.

    git archive main src | tar -x -C /tmp/main-src
    .venv/bin/python bench/telemetry.py --before main=/tmp/main-src/src [--quick]

The machinery is bench/gateway.py's: the mock upstream, `tollway serve` homes
(bench/common.serve), a funded key, wrk at each concurrency level with the
setups interleaved per level. Targets: telemetry off within 1% of the
``--before`` revision; traces on at most 15% lower. Writes
bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import admin_token, cpu_seconds, machine, print_targets, run_in_tmp, serve
from gateway import check, free_port, gateway_config, lua, setup_customer, spawn, tollway_toml, wrk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "telemetry.json"


class Collector:
    """An OTLP/HTTP receiver that counts export requests and bytes, and drops them."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        got = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                got.exports += 1
                got.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _telemetry(text: str, **values: str) -> str:
    """Set keys of the [telemetry] section `tollway init` writes."""
    for key, value in values.items():
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        lines[at] = f"{key} = {value}"
        text = "\n".join(lines) + "\n"
    return text


def edits(collector: Collector) -> dict[str, Callable[[str], str]]:
    return {
        "off": gateway_config,
        "traces": lambda t: _telemetry(
            gateway_config(t), traces="true", otlp_endpoint=json.dumps(collector.url), sample_ratio="1.0"
        ),
        "json_logs": lambda t: _telemetry(gateway_config(t), log_format='"json"', access_log='"on"'),
    }


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    collector = Collector()
    mock_port = free_port()
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    os.environ["NO_PROXY"] = env["NO_PROXY"]
    mock_cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
    setups = [*(f"before@{rev}" for rev in a.before), "off", "traces", "json_logs"]
    with ExitStack() as stack:
        stack.enter_context(spawn("mock upstream", mock_cmd, f"{upstream}/models", tmp / "mock.log", env, 30))
        how = edits(collector)
        targets: dict[str, tuple[str, dict[str, str]]] = {}
        pids: dict[str, int] = {}
        for name in setups:
            home = tmp / name.replace("@", "_")
            home.mkdir()
            rev = name.removeprefix("before@") if name.startswith("before@") else None
            src = (
                a.before[rev] if rev is not None else HERE.parent / "src"
            )  # this tree's, whatever is installed
            srv = stack.enter_context(
                serve(home, tollway_toml(upstream), edit=how.get(name, gateway_config), src=src)
            )
            print(f"{name} up in {srv.ready_s} s: {srv.cmd}", flush=True)
            pids[name] = srv.pid
            key = setup_customer(srv.url, admin_token(home))
            targets[name] = (f"{srv.url}/v1/chat/completions", {"Authorization": f"Bearer {key}"})
        scripts = {s: lua(tmp / f"{s.replace('@', '_')}.lua", h) for s, (_, h) in targets.items()}
        for s, (url, h) in targets.items():
            check(s, url, h)
            wrk(url, scripts[s], 16, a.threads, a.warmup)  # warm-up, not recorded
        points: dict[str, dict[str, Any]] = {s: {} for s in setups}
        for r in range(a.rounds):
            # Each round starts one setup later: a setup's place in the rotation (after which
            # server's trailing work: its WAL checkpoint, its exporter's flush) is not fixed.
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for c in a.levels:
                for s in order:
                    time.sleep(a.settle)
                    cpu0 = cpu_seconds(pids[s])
                    res = wrk(targets[s][0], scripts[s], c, a.threads, a.duration)
                    res["cpu_us_per_request"] = round(
                        (cpu_seconds(pids[s]) - cpu0) / max(res["rps"] * a.duration, 1) * 1e6, 1
                    )
                    points[s].setdefault(str(c), []).append(res)
                    print(
                        f"c={c:<3} {s:<16} {res['rps']:>9.1f} req/s  p50 {res['p50_ms']:.3f} ms"
                        f"  cpu {res['cpu_us_per_request']:.0f} us/req",
                        flush=True,
                    )
        json_log = (tmp / "json_logs" / "serve.log").read_text().splitlines()
    best = {s: {c: max(r["rps"] for r in rs) for c, rs in p.items()} for s, p in points.items()}
    med = {s: {c: statistics.median(r["rps"] for r in rs) for c, rs in p.items()} for s, p in points.items()}
    cpu = {
        s: {c: statistics.median(r["cpu_us_per_request"] for r in rs) for c, rs in p.items()}
        for s, p in points.items()
    }
    out: dict[str, Any] = {
        "command": "python bench/telemetry.py"
        + (" --quick" if a.quick else "")
        + "".join(f" --before {rev}={src}" for rev, src in a.before.items()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(wrk_threads=a.threads, load_avg_before=load_before),
        "setup": {
            "duration_s": a.duration,
            "rounds": a.rounds,
            "levels": a.levels,
            "traces": "OTLP/HTTP to a local collector, sample_ratio 1.0, BatchSpanProcessor",
            "json_logs": 'log_format = "json", access_log = "on" (to the server\'s log file)',
            "collector": {"exports": collector.exports, "bytes": collector.bytes},
            "json_log_lines": len(json_log),
        },
        "points": points,
        "best_rps": best,
        "median_rps": med,
        "median_cpu_us_per_request": cpu,
        "ratios": {},
        "targets": [],
    }
    # Targets on the median of the rounds' req/s (best-of and CPU per request recorded beside)
    for c in map(str, a.levels):
        r = out["ratios"][c] = {}
        for name, over in [
            ("traces", "off"),
            ("json_logs", "off"),
            *(("off", f"before@{v}") for v in a.before),
        ]:
            label = f"{name}_over_{over.removeprefix('before@')}"
            r[label] = {
                "median_rps": round(med[name][c] / med[over][c], 4),
                "best_rps": round(best[name][c] / best[over][c], 4),
                "cpu_per_request": round(cpu[over][c] / cpu[name][c], 4),  # > 1: cheaper
            }
            target = 0.85 if name == "traces" else 0.99 if name == "off" else None
            if target is not None:
                m = r[label]["median_rps"]
                out["targets"].append(
                    {"name": f"{label}, c={c}", "measured": m, "target": target, "pass": m >= target}
                )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per point, 1 s warm-up, one round: a smoke run")
    p.add_argument("--duration", type=float, default=10, help="seconds of wrk per point")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3, help="each point this often (the best is kept)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="REV=SRC",
        help="another revision's src/ directory (git archive REV src | tar -x -C DIR): the A in the A/B",
    )
    a = p.parse_args()
    a.before = {rev: Path(src) for rev, _, src in (b.partition("=") for b in a.before)}
    if a.quick:
        a.duration, a.warmup, a.settle, a.rounds = 2, 1, 0.2, 1
    res = run_in_tmp("tollway-bench-telemetry-", lambda tmp: run(a, tmp), a.out)
    for s, v in res["best_rps"].items():
        print(f"{s:<16} req/s: " + ", ".join(f"c={c} {x:,.1f}" for c, x in v.items()))
    for c, rs in res["ratios"].items():
        for label, r in rs.items():
            print(f"c={c} {label}: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    print_targets(res["targets"])
    print(f"collector: {res['setup']['collector']}; JSON log lines: {res['setup']['json_log_lines']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
