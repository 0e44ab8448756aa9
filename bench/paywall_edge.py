"""The edge's paywall: requests/s of a deployment behind an agent's x402 rule,
with a valid payment per request, against the same deployment served by the
edge without a rule, in one run (issue 22 §2; target: paid >= 0.7 x unpriced).

    .venv/bin/python bench/paywall_edge.py [--quick] [--before SRC]

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
  wallet's earnings and the operator's fee as one ledger chain);
- **ai_direct** / **ai_paid** (a realistic app): the AI-binding example
  (``provision/examples/ai_answer``: ``GET /answer?q=`` asks tollway's
  embedded model through the worker's AI socket, charged to the wallet),
  deployed twice, one priced; ``--ai-conns`` connections, ``AI_MAX_TOKENS``
  ``--ai-tokens``. ``--no-ai`` skips it.

``--before SRC`` (another revision's ``src/``, e.g. main's:
``git archive main src | tar -x -C /tmp/edgeperf-main`` then
``--before /tmp/edgeperf-main/src``) serves the same setup from those sources
beside this one, interleaved round by round: an A/B on the same noisy machine
(compare the ratios).

Writes bench/results/paywall_edge.json and prints rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import zipfile
from contextlib import ExitStack
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
SRC = Path(__file__).resolve().parent.parent / "src"
AI_APP = SRC / "tollway/provision/examples/ai_answer/app.py"
AI_ROUTE = "/answer?q=What+is+a+toll+road%3F"
KINDS = ("unpriced", "relayed", "paid", "ai_direct", "ai_paid")


def lua(path: Path, host: str, route: str) -> Path:
    """A wrk script: ``route`` on ``host``."""
    path.write_text(
        f'local h = {{["Host"] = "{host}"}}\n'
        f'request = function() return wrk.format("GET", "{route}", h) end\n'
    )
    return path


def ai_bundle() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", AI_APP.read_text())
    return base64.b64encode(buf.getvalue()).decode()


def deploy(url: str, token: str, name: str, code: str, env: dict[str, str] | None = None) -> None:
    body: dict[str, Any] = {"name": name, "entrypoint": "app:app", "bundle": code}
    if env:
        body["env"] = env
    st, raw = call("POST", url + "/v1/broker/provision/deployments", body, token)
    if st != 201:
        raise RuntimeError(raw.decode())


def price(url: str, token: str, host: str, path: str) -> dict[str, Any]:
    body = {"name": host.split(".")[0], "host": host, "path": path, "price": "$0.001"}
    st, raw = call("POST", url + "/v1/x402/rules", body, token)
    if st != 201:
        raise RuntimeError(raw.decode())
    out: dict[str, Any] = json.loads(raw)
    return out


def required_at(edge: str, host: str, route: str) -> dict[str, Any]:
    r = httpx.get(edge + route, headers={"host": host}, timeout=120)
    if r.status_code != 402:
        raise RuntimeError(f"expected 402 from the priced host, got {r.status_code}: {r.text[:300]}")
    out: dict[str, Any] = json.loads(base64.b64decode(r.headers["payment-required"]))
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Payments:
    """A file of pre-signed payments that wrk reads from the top: each run starts past the spent ones."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.left = path, n

    def skip(self, spent: int) -> None:
        lines = self.path.read_text().splitlines()[spent:]
        if not lines:
            raise RuntimeError("ran out of pre-signed payments: raise --max-rps")
        self.path.write_text("\n".join(lines) + "\n")
        self.left = len(lines)


class Setup:
    """One ``tollway serve`` (these sources, or ``--before``'s) with the deployments, priced."""

    def __init__(self, a: argparse.Namespace, stack: ExitStack, tmp: Path, src: Path | None) -> None:
        tmp.mkdir()
        self.a, self.edge_port = a, free_port()

        def edit(text: str) -> str:
            text = text.replace("edge_port = 8788", f"edge_port = {self.edge_port}")
            return text.replace('key_env = "TOLLWAY_WALLET_KEY"', 'key_env = "BENCH_WALLET_KEY"')

        srv = stack.enter_context(serve(tmp, edit=edit, src=src))
        self.pid = srv.pid
        self.url, self.edge = srv.url, f"http://127.0.0.1:{self.edge_port}"
        admin = admin_token(tmp)
        self.token = token = agent(srv.url, admin)
        for name in ("free", "paid"):
            deploy(srv.url, token, name, bundle(name))
        self.rule = price(srv.url, token, f"paid.{APPS}", "/paid")["id"]
        if a.ai:
            env = {"AI_MAX_TOKENS": str(a.ai_tokens)}
            for name in ("ai", "aipaid"):
                deploy(srv.url, token, name, ai_bundle(), env)
            price(srv.url, token, f"aipaid.{APPS}", "/answer")
        time.sleep(2.5)  # every process has the rules (Paywall.watch)
        self.scripts = {
            "unpriced": lua(tmp / "free.lua", f"free.{APPS}", "/"),
            "relayed": lua(tmp / "relay.lua", f"paid.{APPS}", "/"),
            "ai_direct": lua(tmp / "ai.lua", f"ai.{APPS}", AI_ROUTE),
        }
        self.payments: dict[str, Payments] = {}
        self.sign_ms = 0.0
        n = int(a.max_rps * a.duration * (a.rounds + 1) * 1.3) + 100
        wanted = [("paid", f"paid.{APPS}", "/paid", n)]
        if a.ai:
            wanted.append(
                ("ai_paid", f"aipaid.{APPS}", AI_ROUTE, int(a.ai_max_rps * a.ai_duration * a.rounds) + 100)
            )
        for kind, host, route, count in wanted:
            hfile = tmp / f"{kind}.txt"
            payer, self.sign_ms = presign(required_at(self.edge, host, route), count, hfile)
            fund(srv.url, admin, payer.address, str(count * 1000 + 10**6))
            self.payments[kind] = Payments(hfile, count)
            self.scripts[kind] = lua_paid(tmp / f"{kind}.lua", hfile, route, host)
        wrk(self.edge + "/", self.scripts["unpriced"], a.conns, 1, 1)  # warm
        self.ai_first_s = self.answer() if a.ai else None  # loads the model

    def answer(self) -> float:
        """One answer by hand, timed: a 200 from the model, before wrk goes."""
        t0 = time.perf_counter()
        r = httpx.get(self.edge + AI_ROUTE, headers={"host": f"ai.{APPS}"}, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"the AI app answered {r.status_code}: {r.text[:300]}")
        return round(time.perf_counter() - t0, 3)

    def measure(self, kind: str) -> dict[str, Any]:
        ai = kind.startswith("ai_")
        secs = self.a.ai_duration if ai else self.a.duration
        cpu0 = cpu_s(self.pid)
        try:
            res = wrk(self.edge + "/", self.scripts[kind], self.a.ai_conns if ai else self.a.conns, 1, secs)
        except RuntimeError as e:  # say what the app answers now
            host = {"unpriced": "free", "relayed": "paid", "ai_direct": "ai"}.get(kind, "")
            url = self.edge + (AI_ROUTE if ai else "/")
            r = httpx.get(url, headers={"host": f"{host}.{APPS}"}, timeout=300)
            why = f"{kind}: {str(e)[:300]}\n{host} now answers {r.status_code}: {r.text[:500]}"
            raise RuntimeError(why) from None
        # The server's CPU per request: robust where the machine is shared (req/s is not).
        res["server_cpu_us_per_request"] = round((cpu_s(self.pid) - cpu0) / max(res["requests"], 1) * 1e6, 1)
        if kind in self.payments:  # the next run starts past the ones spent (and any in flight)
            self.payments[kind].skip(res["requests"] + (self.a.ai_conns if ai else self.a.conns))
        return res

    def earnings(self) -> Any:
        me = httpx.get(self.url + "/v1/wallet", headers={"authorization": f"Bearer {self.token}"}, timeout=30)
        return me.json().get("earnings")


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    best = {k: max(r["rps"] for r in v) for k, v in runs.items() if v}
    cpu = {k: min(r["server_cpu_us_per_request"] for r in v) for k, v in runs.items() if v}
    out: dict[str, Any] = {"best_rps": best, "server_cpu_us_per_request": cpu}

    def ratio(a: str, b: str) -> float | None:
        return round(best[a] / best[b], 3) if best.get(a) and best.get(b) else None

    out["paid_over_unpriced"] = ratio("paid", "unpriced")
    out["relayed_over_unpriced"] = ratio("relayed", "unpriced")
    out["paid_over_relayed"] = ratio("paid", "relayed")
    out["ai_paid_over_ai_direct"] = ratio("ai_paid", "ai_direct")
    return out


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    os.environ["BENCH_WALLET_KEY"] = secrets.token_hex(32)  # serve() passes no TOLLWAY_* variable
    load_before = [round(x, 2) for x in os.getloadavg()]
    kinds = [k for k in KINDS if (a.ai or not k.startswith("ai_")) and (not a.only or k in a.only)]
    with ExitStack() as stack:
        setups = {"tollway": Setup(a, stack, tmp / "this", SRC)}  # this checkout's sources, not the venv's
        if a.before is not None:
            setups["before"] = Setup(a, stack, tmp / "before", a.before.resolve())
        runs = {name: {k: [] for k in kinds} for name in setups}  # type: dict[str, dict[str, list[Any]]]
        for _ in range(a.rounds):
            for kind in kinds:  # interleaved: each kind on each setup, back to back
                for name, s in setups.items():
                    runs[name][kind].append(s.measure(kind))
        earned = {name: s.earnings() for name, s in setups.items()}
        sign_ms = setups["tollway"].sign_ms
        setups_first = setups["tollway"].ai_first_s
    out = {name: {"runs": r, **summary(r), "wallet_earnings": earned[name]} for name, r in runs.items()}
    this = out["tollway"]
    res: dict[str, Any] = {
        "command": "python bench/paywall_edge.py"
        + (" --quick" if a.quick else "")
        + (" --before SRC" if a.before else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_avg_before=load_before),
        "setup": {
            "wrk": f"wrk -t1 -c{a.conns} -d{a.duration:g}s, {a.rounds} rounds alternated; best of each",
            "ai": f"wrk -t1 -c{a.ai_conns} -d{a.ai_duration:g}s, AI_MAX_TOKENS={a.ai_tokens}, first answer"
            f" {setups_first}s (loads the model)"
            if a.ai
            else "skipped",
            "price": "$0.001 a request, to the agent's wallet (5% to sys_fees)",
            "signing_ms_per_authorization": round(sign_ms, 3),
            "before": str(a.before) if a.before else None,
        },
        **out,
        "target": 0.7,
        "pass": (this["paid_over_unpriced"] or 0) >= 0.7,
    }
    if "before" in out and "paid" in kinds:
        b = out["before"]["best_rps"]
        res["paid_over_before"] = round(this["best_rps"]["paid"] / b["paid"], 3)
        cb = out["before"]["server_cpu_us_per_request"]
        res["paid_cpu_over_before"] = round(this["server_cpu_us_per_request"]["paid"] / cb["paid"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s (the AI app 5 s), one round, c=8 (a smoke run)")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--max-rps", type=float, default=3000, help="pre-sign enough payments for this rate")
    ap.add_argument("--before", type=Path, help="another revision's src/ directory, served beside (A/B)")
    ap.add_argument("--no-ai", dest="ai", action="store_false", help="skip the AI-binding app")
    ap.add_argument("--ai-conns", type=int, default=4)
    ap.add_argument("--ai-duration", type=float, default=15, help="seconds of each AI run")
    ap.add_argument("--ai-tokens", type=int, default=16, help="max_tokens of each answer")
    ap.add_argument("--ai-max-rps", type=float, default=100, help="pre-sign enough AI payments for this rate")
    ap.add_argument("--only", nargs="+", choices=KINDS, help="measure only these (e.g. paid, to profile it)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.quick:
        a.duration, a.rounds, a.conns, a.max_rps, a.ai_duration = 2, 1, 8, 1500, 5
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    subprocess.run(["wrk", "-v"], capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        res = run(a, Path(d))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    this = res["tollway"]
    verdict = "PASS" if res["pass"] else "MISS"
    print(f"[{verdict}] paid / unpriced req/s: {this['paid_over_unpriced']} (target 0.7)")
    if this["ai_paid_over_ai_direct"] is not None:
        print(f"AI-binding app, paid / direct req/s: {this['ai_paid_over_ai_direct']}")
    if "paid_over_before" in res:
        print(f"paid req/s, this / before: {res['paid_over_before']}")
        print(f"server CPU per paid request, this / before: {res['paid_cpu_over_before']}")
    print(f"wrote {a.out}\n\n--- suggested docs/benchmarks.md rows ---\n")
    for name in ("tollway", "before"):
        if name in res:
            r = res[name]
            b, cpu = r["best_rps"], r["server_cpu_us_per_request"]
            cells = [f"{b[k]:,.0f} ({cpu[k]:,.0f} µs)" if k in b else "-" for k in KINDS]
            ratios = f"{r['paid_over_unpriced']}x | {r['ai_paid_over_ai_direct']}x"
            print(f"| {name} | " + " | ".join(cells) + f" | {ratios} |")


if __name__ == "__main__":
    main()
