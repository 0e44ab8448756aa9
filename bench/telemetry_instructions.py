"""What telemetry costs the gateway, counted in instructions rather than seconds.

bench/telemetry.py measures requests/s, which this 2-core machine moves by
10-30% between rounds (its speed, not the code's). Here every `tollway serve`
runs under valgrind's callgrind with instrumentation off until the load starts;
for each point its counters are zeroed, turned on for one wrk run, then dumped:
the instructions the server (and, with traces, its span exporter process) ran,
divided by the requests wrk completed. Repeatable to a few percent whatever
else the machine does. Callgrind runs a process ~50x slower and one thread at a
time, so the servers serve a few dozen requests/s: this counts work, it does not
time it. The setups are bench/telemetry.py's (its mock upstream, homes,
collector and configs), interleaved per round.

    apt-get install -y valgrind wrk
    git archive a29e942 src | tar -x -C /tmp/rev/a29e942
    .venv/bin/python bench/telemetry_instructions.py --before a29e942=/tmp/rev/a29e942/src

Targets, as bench/telemetry.py's (a work ratio stands for a req/s ratio):
telemetry off within 1% of the ``--before`` revision; traces on at most 15% lower
(instructions at most 1/0.85 of off's). Writes bench/results/telemetry_instructions.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
from common import admin_token, machine, print_targets, run_in_tmp, serve
from gateway import check, free_port, gateway_config, lua, setup_customer, spawn, tollway_toml, wrk
from telemetry import Collector, edits

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "telemetry_instructions.json"


def _callgrind(out_dir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",  # start-up runs uninstrumented (fast); the load is counted
        "--trace-children=yes",  # the span exporter process too
        "--dump-instr=no",
        f"--callgrind-out-file={out_dir}/cg.%p",
        sys.executable,
        "-c",
        common._SCRIPT,
    ]


def _family(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    return [pid, *kids]


def _ctl(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False, timeout=60)


def _total(out_dir: Path, pid: int) -> int:
    """The instructions in ``pid``'s newest dump."""
    dumps = sorted(out_dir.glob(f"cg.{pid}.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        return 0
    found = 0
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):  # (summary: may be 0, totals: follows)
            found = max(found, int(line.split()[1]))
    return found


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    collector = Collector()
    mock_port = free_port()
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    os.environ["NO_PROXY"] = env["NO_PROXY"]
    out_dir = tmp / "callgrind"
    out_dir.mkdir()
    setups = [*(f"before@{rev}" for rev in a.before), "off", "traces"]
    how = edits(collector)
    points: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    real_cli = common.cli
    with ExitStack() as stack:
        mock_cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
        stack.enter_context(spawn("mock upstream", mock_cmd, f"{upstream}/models", tmp / "mock.log", env, 30))
        targets: dict[str, tuple[str, Path, int]] = {}
        for name in setups:
            home = tmp / name.replace("@", "_")
            home.mkdir()
            rev = name.removeprefix("before@") if name.startswith("before@") else None
            src = a.before[rev] if rev is not None else HERE.parent / "src"
            calls = [0]

            def cli(src: Path | None = None, calls: list[int] = calls) -> list[str]:
                calls[0] += 1  # `tollway init` as it is; `tollway serve` under callgrind
                return real_cli(src) if calls[0] == 1 else _callgrind(out_dir)

            common.cli = cli
            try:
                srv = stack.enter_context(
                    serve(home, tollway_toml(upstream), edit=how.get(name, gateway_config), src=src)
                )
            finally:
                common.cli = real_cli
            print(f"{name} up under callgrind in {srv.ready_s} s", flush=True)
            key = setup_customer(srv.url, admin_token(home))
            url = f"{srv.url}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {key}"}
            script = lua(tmp / f"{name.replace('@', '_')}.lua", headers)
            check(name, url, headers)
            wrk(url, script, a.concurrency, 1, a.warmup)  # uninstrumented warm-up
            targets[name] = (url, script, srv.pid)
        for r in range(a.rounds):
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for name in order:
                url, script, pid = targets[name]
                family = _family(pid)
                for p in family:
                    _ctl("-z", str(p))
                    _ctl("-i", "on", str(p))
                res = wrk(url, script, a.concurrency, 1, a.duration)
                for p in family:
                    _ctl("-i", "off", str(p))
                    _ctl("-d", f"{name}-{r}", str(p))
                time.sleep(1)
                requests = res["rps"] * a.duration
                per = {str(p): _total(out_dir, p) for p in family}
                total = sum(per.values())
                point = {
                    "requests": round(requests),
                    "instructions": total,
                    "by_process": per,
                    "kinstructions_per_request": round(total / max(requests, 1) / 1000, 1),
                }
                points[name].append(point)
                print(
                    f"round {r + 1} {name:<16} {point['requests']:>6} requests"
                    f"  {point['kinstructions_per_request']:>8,.1f} k instructions a request"
                    f"  ({len(family)} process{'es' if len(family) > 1 else ''})",
                    flush=True,
                )
    med = {s: statistics.median(p["kinstructions_per_request"] for p in ps) for s, ps in points.items()}
    out: dict[str, Any] = {
        "command": "python bench/telemetry_instructions.py"
        + "".join(f" --before {rev}={src}" for rev, src in a.before.items())
        + f" --rounds {a.rounds} --duration {a.duration:g} --concurrency {a.concurrency}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(wrk_threads=1),
        "setup": {
            "measure": "valgrind callgrind Ir (instructions), server plus its child processes, per request",
            "concurrency": a.concurrency,
            "duration_s": a.duration,
            "rounds": a.rounds,
            "collector": {"exports": collector.exports, "bytes": collector.bytes},
        },
        "points": points,
        "median_kinstructions_per_request": med,
        "ratios": {},
        "targets": [],
    }
    # A work ratio read as a speed ratio: fewer instructions a request, more requests a second.
    for name, over, target in [("traces", "off", 0.85), *(("off", f"before@{v}", 0.99) for v in a.before)]:
        label = f"{name}_over_{over.removeprefix('before@')}"
        ratio = round(med[over] / med[name], 4)
        out["ratios"][label] = ratio
        out["targets"].append({"name": label, "measured": ratio, "target": target, "pass": ratio >= target})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30, help="seconds of wrk per point")
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--before", action="append", default=[], metavar="REV=SRC")
    a = p.parse_args()
    a.before = {rev: Path(src) for rev, _, src in (b.partition("=") for b in a.before)}
    res = run_in_tmp("tollway-bench-instructions-", lambda tmp: run(a, tmp), a.out)
    for s, v in res["median_kinstructions_per_request"].items():
        print(f"{s:<16} {v:>8,.1f} k instructions a request (median)")
    print_targets(res["targets"])
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
