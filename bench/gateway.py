"""AI-gateway overhead benchmark: the same chat completion sent directly to a mock
OpenAI upstream, through tollway and through the LiteLLM proxy, in one run.

    .venv/bin/python bench/gateway.py [--quick] [--rounds 5] [--load-rounds 3]

All three servers are up at once and share one mock upstream
(bench/mock_upstream.py: raw ASGI under uvicorn, a fixed answer). wrk drives
each setup at concurrency 1, 16 and 64; the setups are interleaved per level
(direct, tollway, LiteLLM at 1, then at 16, then at 64) so that machine noise
hits all alike.

- **direct**: wrk to the mock upstream.
- **tollway**: a real `tollway serve` (fresh `tollway init`, SQLite FULL) with one
  `openai`-backend model pointing at the mock; a funded customer's API key, so
  every call walks auth, the charge hold, metering and the usage event.
  `gateway_config` below turns on rate limits for every key and customer
  (far above this load); the request log is always on.
- **litellm**: `litellm --config` (proxy, one uvicorn worker, master key, no
  database) in its own virtualenv bench/.venv-litellm, created on first use.
  LiteLLM is never a dependency of tollway.

Reports latency at concurrency 1 (p50/p99, raw and added over direct: pure
overhead) and requests/s at 16 and 64. Writes bench/results/gateway.json and
prints a section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from common import admin_token, machine, positive, rss_mb, serve, speed_probe

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gateway.json"
LITELLM_VENV = HERE / ".venv-litellm"
# Newer LiteLLM releases need a certifi release the package mirror does not have.
LITELLM_VERSION = "1.100.5"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"
MODEL = "mock"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
SETUPS: tuple[str, ...] = ("direct", "tollway", "tollway_fast", "tollway_normal", "litellm")
# SQLite synchronous = FULL (the default); FULL with [ledger] acknowledge = "fast"
# (the response before the settle's commit: the behaviour before durable charging); NORMAL
TOLLWAYS: tuple[str, ...] = ("tollway", "tollway_fast", "tollway_normal")
LABELS = {
    "direct": "Direct to the mock upstream",
    "tollway": "tollway, SQLite `FULL` (default)",
    "tollway_fast": 'tollway, SQLite `FULL`, `acknowledge = "fast"`',
    "tollway_normal": "tollway, SQLite `NORMAL`",
    "litellm": "LiteLLM proxy",
}

# ---------------------------------------------------------------- GATEWAY_TOML
# Appended to tollway's config after the mock model. Fill in the gateway section
# (per-key rate limits, request log) once tollway has it, so the "through tollway"
# setup runs with rate limiting and logging on. Set every limit far above what
# this benchmark sends (say 10,000,000 requests a minute): a 429 fails the run.
GATEWAY_TOML = "[gateway] rate limits on every key and customer (far above this load), request log on"


def gateway_config(text: str) -> str:
    """Turn on the default config's per-key and per-customer rate limits; the
    deployments' edge off (the first server started took its port, the others
    could not: the setups were not alike)."""
    text = re.sub(r"^rpm = 0\b", "rpm = 10000000", text, flags=re.M)
    text = re.sub(r"^edge_port = 8788\b", "edge_port = 0", text, flags=re.M)
    return re.sub(r"^tpm = 0\b", "tpm = 1000000000", text, flags=re.M)


def fast_config(text: str) -> str:
    """The default, acknowledging a charge before its commit (the opt-in ``fast`` mode)."""
    text = gateway_config(text)
    out = re.sub(r'^acknowledge = "durable"', 'acknowledge = "fast"', text, flags=re.M)
    if out == text:
        raise RuntimeError("tollway init's config no longer sets acknowledge")
    return out


def normal_config(text: str) -> str:
    """The same, with SQLite's ``synchronous = NORMAL``: in WAL mode a commit is
    durable against a process crash (kill -9) but not a power cut."""
    text = gateway_config(text)
    out = re.sub(r'^sqlite_synchronous = "FULL"', 'sqlite_synchronous = "NORMAL"', text, flags=re.M)
    if out == text:
        raise RuntimeError("tollway init's config no longer sets sqlite_synchronous")
    return out


# ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextmanager
def spawn(
    name: str, cmd: list[str], ready_url: str, log: Path, env: dict[str, str], timeout: float
) -> Iterator[int]:
    """Start ``cmd``, wait until GET ``ready_url`` is 200, yield its pid; stop it on exit."""
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not answers(ready_url):
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{name} never answered {ready_url}:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        print(f"{name} up in {time.monotonic() - t0:.1f} s: {shlex.join(cmd)}", flush=True)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------- LiteLLM


def litellm_installed(python: Path) -> str:
    if not python.exists():
        return ""
    r = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else ""


def ensure_litellm(version: str) -> str:
    """bench/.venv-litellm with ``litellm[proxy]==version``; returns the installed version."""
    python = LITELLM_VENV / "bin" / "python"
    have = litellm_installed(python)
    if have == version and (LITELLM_VENV / "bin" / "litellm").exists():
        return have
    if not python.exists():
        print(f"creating {LITELLM_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    print(f"installing litellm[proxy]=={version} into {LITELLM_VENV} (a few minutes)", flush=True)
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"litellm[proxy]=={version}"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(
            f"pip could not install litellm[proxy]=={version}:\n{(r.stdout + r.stderr)[-3000:]}\n"
            "Try the nearest version that installs with --litellm-version X.Y.Z."
        )
    return litellm_installed(python)


def litellm_files(tmp: Path, upstream: str) -> tuple[Path, Path]:
    """The proxy config (one model, a master key, no database) and a uvicorn log config
    without the access log (tollway serve has none either)."""
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-mock\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )
    log = tmp / "litellm-log.json"
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    log.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"default": handler},
                "loggers": {
                    "uvicorn": {"handlers": ["default"], "level": "WARNING"},
                    "uvicorn.error": {"level": "WARNING"},
                    "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
                },
            }
        )
    )
    return cfg, log


def litellm_env() -> dict[str, str]:
    drop = ("DATABASE_URL", "DIRECT_URL", "REDIS_", "LITELLM_", "OPENAI_", "STORE_MODEL_IN_DB")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        LITELLM_LOG="ERROR",  # the documented switch for LiteLLM's own logging
        LITELLM_MODE="PRODUCTION",  # no .env loading
        DISABLE_ADMIN_UI="True",
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # the bundled cost map: no fetch at start-up
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


# ------------------------------------------------------------------- tollway


def tollway_toml(upstream: str) -> str:
    model = (
        "[[models]]\n"
        f'name = "{MODEL}"\n'
        'task = "chat"\n'
        'backend = "openai"\n'
        f'base_url = "{upstream}"\n'
        "neurons_per_m_input = 2457\n"
        "neurons_per_m_output = 18252\n"
    )
    return model


def setup_customer(url: str, token: str) -> str:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        c = http.post("/admin/customers", json={"name": "bench"}, headers=h).raise_for_status().json()
        t = {"debit_account_id": "sys_funding", "credit_account_id": c["account_id"], "amount": 10**12}
        http.post("/admin/ledger/transfers", json=t, headers=h).raise_for_status()
        key: str = http.post("/admin/keys", json={"customer_id": c["id"]}, headers=h).json()["key"]
    return key


def usage_events(tmp: Path) -> int:
    with sqlite3.connect(f"file:{tmp / '.tollway' / 'tollway.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM usage_events").fetchone()[0])


# ----------------------------------------------------------------------- wrk

SOCKET_ERRORS = ("connect", "read", "write", "timeout")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return round(float(m[1]) * _UNITS[m[2]], 3)


def parse_wrk(out: str) -> dict[str, Any]:
    pct = {f"p{p}_ms": ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+\w+)", out, re.M)
    if not rps or not total or "p50_ms" not in pct or "p99_ms" not in pct:
        raise RuntimeError(f"could not parse wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": round(float(rps[1]), 1),
        **pct,
        "requests": int(total[1]),
        "non_2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": dict(zip(SOCKET_ERRORS, map(int, sock.groups()), strict=True)) if sock else {},
    }


def lua(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [[{json.dumps(BODY)}]]"]
    headers = {"Content-Type": "application/json", **headers}
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, conns: int, threads: int, seconds: float) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(min(threads, conns)), "-c", str(conns), "-d", f"{seconds:g}s"]
    cmd += ["--timeout", "30s", "--latency", "-s", str(script), url]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {shlex.join(cmd)}\n{r.stdout}{r.stderr}")
    res = parse_wrk(r.stdout)
    errors = sum(res["socket_errors"].values())
    if res["non_2xx"] or errors:
        raise RuntimeError(
            f"{url} at concurrency {conns}: {res['non_2xx']} non-2xx responses, "
            f"socket errors {res['socket_errors']}\n{r.stdout}"
        )
    return res


def check(name: str, url: str, headers: dict[str, str]) -> None:
    """One request by hand: a 200 with the mock's completion, before wrk goes."""
    r = httpx.post(url, json=BODY, headers=headers, timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"{name}: HTTP {r.status_code}: {r.text[:500]}")
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    if "mock upstream" not in content or body["usage"]["completion_tokens"] != 8:
        raise RuntimeError(f"{name}: unexpected answer {body}")


# ----------------------------------------------------------------------- run


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine shows here
    speed = {"start": speed_probe(tmp)}  # and the machine's own speed today (see speed_probe)
    wrk_version = " ".join(subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2])
    litellm_version = ensure_litellm(a.litellm_version)
    mock_port, litellm_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{mock_port}/v1"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    os.environ["NO_PROXY"] = env["NO_PROXY"]  # tollway serve inherits it
    cfg, log_cfg = litellm_files(tmp, upstream)
    litellm_cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1"]
    litellm_cmd += ["--port", str(litellm_port), "--num_workers", "1", "--telemetry", "False"]
    litellm_cmd += ["--log_config", str(log_cfg)]
    mock_cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]

    with ExitStack() as stack:
        mock_pid = stack.enter_context(
            spawn("mock upstream", mock_cmd, f"{upstream}/models", tmp / "mock.log", env, 30)
        )
        srvs, keys = {}, {}
        edits = {
            "tollway": gateway_config,
            "tollway_fast": fast_config,
            "tollway_normal": normal_config,
            **{f"tollway@{rev}": gateway_config for rev in a.before},
        }
        for name in TOLLWAYS:
            home = tmp / name
            home.mkdir()
            src = a.before.get(name.removeprefix("tollway@")) if "@" in name else None
            srvs[name] = srv = stack.enter_context(
                serve(home, tollway_toml(upstream), edit=edits[name], src=src)
            )
            print(f"{name} up in {srv.ready_s} s: {srv.cmd}", flush=True)
            keys[name] = setup_customer(srv.url, admin_token(home))
        litellm_pid = stack.enter_context(
            spawn(
                "litellm",
                litellm_cmd,
                f"http://127.0.0.1:{litellm_port}/health/liveliness",
                tmp / "litellm.log",
                litellm_env(),
                300,
            )
        )
        targets = {
            "direct": (f"{upstream}/chat/completions", {}),
            **{
                n: (f"{srvs[n].url}/v1/chat/completions", {"Authorization": f"Bearer {keys[n]}"})
                for n in TOLLWAYS
            },
            "litellm": (
                f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
            ),
        }
        scripts = {s: lua(tmp / f"{s}.lua", h) for s, (_, h) in targets.items()}
        for s, (url, h) in targets.items():
            check(s, url, h)
            wrk(url, scripts[s], 16, a.threads, a.warmup)  # warm-up, not recorded
        points: dict[str, dict[str, Any]] = {s: {} for s in SETUPS}
        for c in a.levels:
            for s in SETUPS:
                time.sleep(a.settle)  # let the previous server's background work drain
                res = wrk(targets[s][0], scripts[s], c, a.threads, a.duration)
                points[s][str(c)] = res
                print(
                    f"c={c:<3} {s:<8} {res['rps']:>9.1f} req/s  p50 {res['p50_ms']:.3f} ms  "
                    f"p99 {res['p99_ms']:.3f} ms",
                    flush=True,
                )
        # More rounds at concurrency 1, the setups in turn (reversed every other round): the
        # machine's speed drifts 10-30% within minutes, so a single point per setup is noisy.
        rounds: dict[str, list[float]] = {}
        if 1 in a.levels:
            rounds = {s: [points[s]["1"]["p50_ms"]] for s in SETUPS}
        for i in range(1, a.rounds if rounds else 1):
            for s in SETUPS if i % 2 == 0 else SETUPS[::-1]:
                time.sleep(a.settle)
                rounds[s].append(wrk(targets[s][0], scripts[s], 1, 1, a.duration)["p50_ms"])
            print(f"c=1 round {i + 1}: " + "  ".join(f"{s} {rounds[s][-1]:.3f}" for s in SETUPS), flush=True)
        # The same under load (--load-rounds): more rounds at each level above 1, the setups in
        # turn (reversed every other round), so the requests/s ratio has a median too; a single
        # point per setup once put durable 37% under NORMAL where an A/B minutes later had them level.
        load: dict[str, dict[str, list[float]]] = {}
        extra = dict.fromkeys(SETUPS, 0)
        high = [str(c) for c in a.levels if c != 1]
        if a.load_rounds > 1 and high:
            load = {s: {c: [points[s][c]["rps"]] for c in high} for s in SETUPS}
        for i in range(1, a.load_rounds if load else 1):
            for c in high:
                for s in SETUPS if i % 2 == 0 else SETUPS[::-1]:
                    time.sleep(a.settle)
                    res = wrk(targets[s][0], scripts[s], int(c), a.threads, a.duration)
                    load[s][c].append(res["rps"])
                    extra[s] += res["requests"]
                line = "  ".join(f"{s} {load[s][c][-1]:,.0f}" for s in SETUPS)
                print(f"c={c} round {i + 1} (req/s): {line}", flush=True)
        speed["end"] = speed_probe(tmp)
        rss = {"mock": rss_mb(mock_pid), **{n: rss_mb(srvs[n].pid) for n in TOLLWAYS}}
        rss["litellm"] = rss_mb(litellm_pid)
        sent = {n: sum(p["requests"] for p in points[n].values()) + extra[n] for n in TOLLWAYS}
        metered = {n: usage_events(tmp / n) for n in TOLLWAYS}

    return {
        "command": "python bench/gateway.py"
        + (" --quick" if a.quick else "")
        + "".join(f" --before {rev}={src}" for rev, src in a.before.items())
        + (" --no-variants" if a.no_variants else "")
        + (f" --rounds {a.rounds}" if a.rounds != 1 else "")
        + (f" --load-rounds {a.load_rounds}" if a.load_rounds != 1 else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(wrk=wrk_version, wrk_threads=a.threads, load_avg_before=load_before),
        "machine_speed": speed,
        "setup": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "levels": a.levels,
            "body": BODY,
            "mock_upstream": "bench/mock_upstream.py (raw ASGI, uvicorn, uvloop + httptools when installed)",
            "tollway": {
                "config": "tollway init defaults (SQLite, sqlite_synchronous = FULL; tollway_fast: "
                'acknowledge = "fast"; tollway_normal: NORMAL) + tollway_toml',
                "tollway_toml": tollway_toml(upstream).replace(upstream, "http://127.0.0.1:<mock>/v1"),
                "gateway_toml_set": bool(GATEWAY_TOML.strip()),
                "usage_events": metered,
                "completed_requests_measured": sent,
            },
            "litellm": {
                "version": litellm_version,
                "requested_version": a.litellm_version,
                "workers": 1,
                "config": "master key, no database, telemetry off, LITELLM_LOG=ERROR, no access log",
            },
        },
        "rss_mb": rss,
        "points": points,
        "rounds_c1_p50_ms": rounds,
        "rounds_load_rps": load,
    }


def _label(n: str) -> str:
    """How the targets table names a tollway setup."""
    return {"tollway": "FULL", "tollway_fast": "FULL, fast", "tollway_normal": "NORMAL"}.get(
        n, f"FULL, at {n.removeprefix('tollway@')}"
    )


def summarize(r: dict[str, Any]) -> None:
    p = r["points"]
    lat: dict[str, Any] = {}
    for s in SETUPS:
        one = p[s].get("1")
        if one:
            d = p["direct"]["1"]
            lat[s] = {
                "p50_ms": one["p50_ms"],
                "p99_ms": one["p99_ms"],
                "added_p50_ms": round(one["p50_ms"] - d["p50_ms"], 3),
                "added_p99_ms": round(one["p99_ms"] - d["p99_ms"], 3),
                "rps": one["rps"],
            }
    r["latency_c1"] = lat
    levels = [c for c in p["tollway"] if c != "1"]
    r["max_rps"] = {s: {c: p[s][c]["rps"] for c in levels} for s in SETUPS}
    r["tollway_over_litellm_rps"] = {
        n: {c: round(p[n][c]["rps"] / p["litellm"][c]["rps"], 2) for c in levels} for n in TOLLWAYS
    }
    rows: list[tuple[str, float, float, bool]] = []
    for n in TOLLWAYS:
        sync = _label(n)
        if n in lat:
            rows += [
                (
                    f"tollway ({sync}) added latency p50 at concurrency 1 (ms)",
                    lat[n]["added_p50_ms"],
                    1,
                    False,
                ),
                (
                    f"tollway ({sync}) added latency p99 at concurrency 1 (ms)",
                    lat[n]["added_p99_ms"],
                    3,
                    False,
                ),
            ]
        if levels:
            best_t = max(p[n][c]["rps"] for c in levels)
            best_l = max(p["litellm"][c]["rps"] for c in levels)
            rows.append((f"tollway ({sync}) max RPS / LiteLLM max RPS", round(best_t / best_l, 2), 12, True))
    rounds = r.get("rounds_c1_p50_ms") or {}
    if len(rounds.get("direct", ())) > 1:
        # Each round's added p50 (the setup's p50 minus the direct one's in that round), the median.
        r["added_p50_ms_rounds"] = {
            n: round(statistics.median(t - d for t, d in zip(rounds[n], rounds["direct"], strict=True)), 3)
            for n in TOLLWAYS
        }
        for n, med in r["added_p50_ms_rounds"].items():
            name = f"tollway ({_label(n)}) added latency p50 at c=1, median of {len(rounds[n])} rounds (ms)"
            rows.append((name, med, 1, False))
    load = r.get("rounds_load_rps") or {}
    k = len(next(iter(load.get("litellm", {}).values()), ()))
    if k > 1:
        # Each round's ratio (the setup's best level over LiteLLM's best level in that round), the median.
        def best(s: str, i: int) -> float:
            return max(v[i] for v in load[s].values())

        ratios = {n: [best(n, i) / best("litellm", i) for i in range(k)] for n in TOLLWAYS}
        r["rps_ratio_rounds"] = {n: round(statistics.median(v), 2) for n, v in ratios.items()}
        for n, med in r["rps_ratio_rounds"].items():
            name = f"tollway ({_label(n)}) max RPS / LiteLLM max RPS, median of {k} rounds"
            rows.append((name, med, 12, True))
    r["targets"] = [
        {"name": n, "measured": m, "target": t, "pass": m >= t if hi else m <= t} for n, m, t, hi in rows
    ]


def speed_line(speed: dict[str, dict[str, float]]) -> str:
    """The machine's speed at the run's start and end (``common.speed_probe``), in words."""

    def at(v: dict[str, float]) -> str:
        return (
            f"Python work {v['python_ms']:g} ms, a 4 KiB `pwrite` {v['pwrite_us']:g} µs, "
            f"`fdatasync` of 64 KiB {v['fdatasync_us']:g} µs"
        )

    return f"Machine speed (`speed_probe`): at the start {at(speed['start'])}; at the end {at(speed['end'])}."


def markdown(r: dict[str, Any]) -> str:
    p, m, lat = r["points"], r["machine"], r["latency_c1"]
    levels = list(p["direct"])
    ver = r["setup"]["litellm"]["version"]
    label = {**LABELS, "litellm": f"LiteLLM proxy {ver}"}
    label |= {
        n: f"tollway at `{n.removeprefix('tollway@')}` (before), SQLite `FULL`" for n in TOLLWAYS if "@" in n
    }
    threads = f"{m['wrk_threads']} thread" + ("s" if m["wrk_threads"] > 1 else "")
    out = [
        "## AI gateway overhead",
        "",
        "`bench/gateway.py` sends the same chat completion (`max_tokens: 8`, not streamed) **in one run**",
        "to a local mock OpenAI upstream (`bench/mock_upstream.py`: raw ASGI under uvicorn, a fixed",
        "answer with usage 12 + 8 tokens) three ways: directly; through `tollway serve` (fresh",
        "`tollway init`, SQLite `FULL`, an `openai`-backend model pointing at the mock, a funded",
        "customer's API key, so every call walks key auth, the charge hold, metering and the usage",
        "event); and through the LiteLLM proxy (its own virtualenv, one uvicorn worker, master key,",
        "no database, telemetry off, `LITELLM_LOG=ERROR`, no access log). All three servers are up at",
        "once; wrk drives each in turn at concurrency 1, 16 and 64, the setups interleaved per level.",
        "Added latency is the setup's p50/p99 at concurrency 1 minus the direct one: pure overhead.",
        "",
        "### Command",
        "",
        "```bash",
        ".venv/bin/python bench/gateway.py    # needs wrk (apt-get install wrk); --quick: 3 s per point",
        f"# defaults: --duration {r['setup']['duration_s']:g} --levels "
        + " ".join(map(str, r["setup"]["levels"]))
        + f" --threads {m['wrk_threads']} --litellm-version {r['setup']['litellm']['requested_version']}",
        "```",
        "",
        "### Results vs targets",
        "",
        f"Run: revision `{m['revision']}`, {r['date'].replace('T', ' ')[:16]} UTC "
        "(`bench/results/gateway.json`),",
        f"{m['cpu']}, **{m['cores']} cores**, Python {m['python']}, {m['wrk']} with "
        f"{threads}, {r['setup']['duration_s']:g} s per point.",
        "wrk, the mock upstream and the gateway under test share the cores.",
        "",
        speed_line(r["machine_speed"]),
    ]
    if r["setup"]["tollway"]["gateway_toml_set"]:
        out += [
            "",
            "tollway ran with rate limits (rpm and tpm) on every key and customer, set far above",
            "this load, and the request log on.",
        ]
    head = "| Setup | p50, c=1 | p99, c=1 | added p50 | added p99 | " + " | ".join(
        f"req/s, c={c}" for c in levels
    )
    out += ["", head + " |", "|---" + "|---:" * (4 + len(levels)) + "|"]
    for s in SETUPS:
        one = lat.get(s, {})
        added = (
            ("—", "—")
            if s == "direct"
            else (f"{one.get('added_p50_ms', 0):.2f} ms", f"{one.get('added_p99_ms', 0):.2f} ms")
        )
        cells = [
            label[s],
            f"{one.get('p50_ms', 0):.2f} ms",
            f"{one.get('p99_ms', 0):.2f} ms",
            *added,
            *(f"{p[s][c]['rps']:,.0f}" for c in levels),
        ]
        out.append("| " + " | ".join(cells) + " |")
    for n in TOLLWAYS:
        ratios = ", ".join(
            f"{v}\N{MULTIPLICATION SIGN} at c={c}" for c, v in r["tollway_over_litellm_rps"][n].items()
        )
        out += ["", f"{label[n]} / LiteLLM requests/s: {ratios}."]
    out += [""]
    out += ["| Metric | Measured | Target | Result |", "|---|---:|---|---|"]
    for t in r["targets"]:
        sign = "≥" if "RPS" in t["name"] else "≤"
        result = "met" if t["pass"] else "**missed**"
        out.append(f"| {t['name']} | {t['measured']} | {sign} {t['target']} | {result} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 s per point, 1 s warm-up: a smoke run")
    p.add_argument("--duration", type=float, default=10, help="seconds of wrk per point")
    p.add_argument("--warmup", type=float, default=3, help="seconds of wrk per setup before measuring")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="concurrency levels")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (at most the concurrency)")
    p.add_argument("--settle", type=float, default=1.0, help="pause (s) before each point")
    p.add_argument("--litellm-version", default=LITELLM_VERSION)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="REV=SRC",
        help="an earlier revision and its src/ directory (git archive REV src | tar -x -C DIR); "
        "adds a tollway@REV setup on its defaults, interleaved with the others (an A/B); repeatable",
    )
    p.add_argument("--no-variants", action="store_true", help="skip tollway_fast and tollway_normal")
    p.add_argument(
        "--rounds",
        type=positive,
        default=1,
        help="rounds at concurrency 1, setups interleaved (median reported)",
    )
    p.add_argument(
        "--load-rounds",
        type=positive,
        default=1,
        help="rounds at each concurrency above 1, setups interleaved (median requests/s ratio reported)",
    )
    a = p.parse_args()
    global SETUPS, TOLLWAYS
    a.before = {rev: Path(src) for rev, _, src in (b.partition("=") for b in a.before)}
    tollways = ["tollway", *(f"tollway@{rev}" for rev in a.before)]
    tollways += [] if a.no_variants else ["tollway_fast", "tollway_normal"]
    TOLLWAYS = tuple(tollways)
    SETUPS = ("direct", *TOLLWAYS, "litellm")
    if a.quick:
        a.duration, a.warmup, a.settle = 3, 1, 0.5
    with tempfile.TemporaryDirectory(prefix="tollway-bench-") as d:
        try:
            res = run(a, Path(d))
        except BaseException:
            for log in sorted(Path(d).glob("*.log")):  # the servers' logs go with the temp dir
                print(f"--- {log.name} (tail) ---\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
    summarize(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    for s, v in res["latency_c1"].items():
        print(
            f"{s:<8} c=1: p50 {v['p50_ms']:.3f} ms, p99 {v['p99_ms']:.3f} ms "
            f"(added p50 {v['added_p50_ms']:+.3f}, p99 {v['added_p99_ms']:+.3f})"
        )
    for s, v in res["max_rps"].items():
        print(f"{s:<8} req/s: " + ", ".join(f"c={c} {x:,.1f}" for c, x in v.items()))
    print(f"tollway / litellm req/s: {res['tollway_over_litellm_rps']}")
    print(speed_line(res["machine_speed"]))
    t = res["setup"]["tollway"]
    for name in TOLLWAYS:
        n, sent = t["usage_events"][name], t["completed_requests_measured"][name]
        print(f"{name} metered {n} usage events for {sent} completed measured requests (plus warm-ups)")
    for t in res["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
    print(f"wrote {a.out}\n\n--- suggested docs/benchmarks.md section ---\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
