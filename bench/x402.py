"""x402 benchmark: paid requests through tollway's gateway against the official
x402 stack, in one run, both settling on the same devnet through tollway's
facilitator.

    .venv/bin/python bench/x402.py [--quick]

- **tollway**: `tollway serve` with a rule pricing `GET /weather` at $0.001
  in front of a local origin (bench/mock_upstream.py's `GET /weather`). Each
  paid request is verified in-process, forwarded to the origin and settled on
  devnet (one ledger transfer) before the response streams back.
- **official**: FastAPI with the SDK's `PaymentMiddlewareASGI` and
  `HTTPFacilitatorClient` pointed at the same tollway's `/x402` facilitator
  (bench/x402_official.py), its handler answering in-process.
- **unpaid**: the same tollway route with a valid API key (the rule is
  `unauthenticated_only`), so the origin is reached without a payment: the
  cost of the paid path is the ratio between the two.

The client pre-signs distinct EIP-3009 authorizations (one per request) and wrk
sends them in order from one thread. Also measures the facilitator's
verification in-process. Writes bench/results/x402.json and prints a section
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from common import admin_token, machine, rss_mb, serve
from gateway import free_port, spawn, wrk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from x402_helpers import Payer  # noqa: E402

RESULTS = HERE / "results" / "x402.json"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def tollway_toml(origin: str) -> str:
    return (
        "\n[[x402.rules]]\n"
        'name = "bench"\n'
        'path = "/weather"\n'
        f'origin = "{origin}"\n'
        'price = "$0.001"\n'
        "unauthenticated_only = true\n"
    )


def set_pay_to(text: str) -> str:
    return text.replace('pay_to = ""', f'pay_to = "{PAY_TO}"', 1)


def requirements_of(url: str) -> dict[str, Any]:
    r = httpx.get(url, timeout=30)
    if r.status_code != 402:
        raise RuntimeError(f"{url}: expected 402, got {r.status_code}: {r.text[:300]}")
    required: dict[str, Any] = json.loads(base64.b64decode(r.headers["payment-required"]))
    return required


def presign(required: dict[str, Any], n: int, path: Path) -> tuple[Payer, float]:
    """``n`` distinct PAYMENT-SIGNATURE values, one per line; returns the payer and
    the signing time per authorization (ms)."""
    payer = Payer(Account.create())
    accept = required["accepts"][0]
    t0 = time.perf_counter()
    with path.open("w") as f:
        for _ in range(n):
            payload = payer.v2(accept)
            payload["resource"] = required["resource"]
            f.write(base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode() + "\n")
    return payer, (time.perf_counter() - t0) / n * 1000


def lua_paid(path: Path, headers_file: Path, route: str, host: str | None = None) -> Path:
    """A wrk script sending the next pre-signed payment with each request (and ``Host``)."""
    host_header = f'["Host"] = "{host}", ' if host else ""
    path.write_text(
        "local h = {}\n"
        f'for line in io.lines("{headers_file}") do h[#h + 1] = line end\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        f'  return wrk.format("GET", "{route}", {{{host_header}["PAYMENT-SIGNATURE"] = h[i]}})\n'
        "end\n"
    )
    return path


def lua_key(path: Path, key: str, route: str) -> Path:
    path.write_text(
        f'local h = {{["Authorization"] = "Bearer {key}"}}\n'
        f'request = function() return wrk.format("GET", "{route}", h) end\n'
    )
    return path


def fund(url: str, token: str, address: str, amount: str) -> None:
    r = httpx.post(
        url + "/admin/x402/devnet/fund",
        json={"address": address, "amount": amount},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    r.raise_for_status()


def api_key(url: str, token: str) -> str:
    h = {"Authorization": f"Bearer {token}"}
    c = httpx.post(url + "/admin/customers", json={"name": "bench"}, headers=h, timeout=30).json()
    key: str = httpx.post(url + "/admin/keys", json={"customer_id": c["id"]}, headers=h, timeout=30).json()[
        "key"
    ]
    return key


async def verify_in_process(n: int) -> dict[str, float]:
    """The facilitator's verify on ``n`` fresh authorizations, in-process (SQLite)."""
    sys.path.insert(0, str(ROOT / "src"))
    from tollway.runtime import Runtime
    from tollway.settings import Settings
    from x402_helpers import requirements

    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.build(Settings(database={"url": f"sqlite:///{d}/t.db"}))  # type: ignore[arg-type]
        try:
            await rt.migrate()
            payer = Payer()
            await rt.devnet.fund(payer.address, 10**9)
            reqs = requirements(1000)
            payloads = [payer.v2(reqs) for _ in range(n)]
            times = []
            for p in payloads:
                t0 = time.perf_counter()
                v = await rt.facilitator.verify(p, reqs)
                times.append((time.perf_counter() - t0) * 1000)
                assert v["isValid"], v
        finally:
            await rt.close()
    times.sort()
    return {"n": n, "p50_ms": round(times[n // 2], 3), "p99_ms": round(times[int(n * 0.99)], 3)}


def run(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    wrk_version = " ".join(
        __import__("subprocess").run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2]
    )
    mock_port, official_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{mock_port}"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    os.environ["NO_PROXY"] = env["NO_PROXY"]
    points: dict[str, dict[str, Any]] = {"tollway": {}, "official": {}, "unpaid": {}}
    signing: dict[str, float] = {}
    with ExitStack() as stack:
        mock = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(mock_port)]
        mock_pid = stack.enter_context(
            spawn("origin", mock, f"{origin}/weather", tmp / "origin.log", env, 30)
        )
        srv = stack.enter_context(serve(tmp, tollway_toml(origin), edit=set_pay_to))
        token = admin_token(tmp)
        print(f"tollway up in {srv.ready_s} s", flush=True)
        official_env = {**env, "X402_FACILITATOR": f"{srv.url}/x402", "X402_PAY_TO": PAY_TO}
        official_cmd = [
            sys.executable, "-m", "uvicorn", "official_app:app", "--app-dir", str(HERE / "x402_official"),
            "--host", "127.0.0.1", "--port", str(official_port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        official_url = f"http://127.0.0.1:{official_port}"
        official_pid = stack.enter_context(
            spawn(
                "official x402 stack",
                official_cmd,
                f"{official_url}/healthz",
                tmp / "official.log",
                official_env,
                60,
            )
        )
        targets = {"tollway": (srv.url, "/weather"), "official": (official_url, "/weather")}
        key = api_key(srv.url, token)
        key_script = lua_key(tmp / "unpaid.lua", key, "/weather")
        # Warm both paths with a few real payments (and the unpaid one), not recorded.
        for c in a.levels:
            for name in ("tollway", "official", "unpaid"):
                time.sleep(a.settle)
                if name == "unpaid":
                    res = wrk(srv.url + "/weather", key_script, c, 1, a.duration)
                else:
                    base, route = targets[name]
                    required = requirements_of(base + route)
                    n = int(a.max_rps * a.duration * 1.3) + 100
                    hfile = tmp / f"{name}-{c}.txt"
                    payer, ms = presign(required, n, hfile)
                    signing[name] = round(ms, 3)
                    fund(srv.url, token, payer.address, str(n * 1000 + 10**6))
                    res = wrk(base + route, lua_paid(tmp / f"{name}-{c}.lua", hfile, route), c, 1, a.duration)
                    if res["requests"] > n:
                        raise RuntimeError(
                            f"{name} at c={c}: ran out of pre-signed authorizations; raise --max-rps"
                        )
                points[name][str(c)] = res
                print(
                    f"c={c:<3} {name:<9} {res['rps']:>9.1f} req/s  p50 {res['p50_ms']:.3f} ms  "
                    f"p99 {res['p99_ms']:.3f} ms",
                    flush=True,
                )
        rss = {"origin": rss_mb(mock_pid), "tollway": rss_mb(srv.pid), "official": rss_mb(official_pid)}
        paid = httpx.get(srv.url + "/admin/x402/revenue", headers={"Authorization": f"Bearer {token}"}).json()
    verify = asyncio.run(verify_in_process(2000 if not a.quick else 300))
    return {
        "command": "python bench/x402.py" + (" --quick" if a.quick else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(wrk=wrk_version, load_avg_before=load_before),
        "setup": {
            "duration_s": a.duration,
            "levels": a.levels,
            "price": "$0.001 (1000 units of the devnet asset)",
            "signing_ms_per_authorization": signing,
            "settled_payments": paid,
        },
        "rss_mb": rss,
        "points": points,
        "verify_in_process": verify,
    }


def summarize(r: dict[str, Any]) -> None:
    p = r["points"]
    levels = list(p["tollway"])
    best = {k: max(p[k][c]["rps"] for c in levels) for k in p}
    r["best_rps"] = best
    r["tollway_over_official"] = round(best["tollway"] / best["official"], 2)
    r["paid_over_unpaid_rps"] = round(best["tollway"] / best["unpaid"], 2)
    one = "1" if "1" in p["tollway"] else None
    r["paid_added_p50_ms_c1"] = (
        round(p["tollway"][one]["p50_ms"] - p["unpaid"][one]["p50_ms"], 3) if one else None
    )
    ratio, v50 = r["tollway_over_official"], r["verify_in_process"]["p50_ms"]
    r["targets"] = [
        {"name": "tollway paid req/s / official stack's", "measured": ratio, "target": 3, "pass": ratio >= 3},
        {"name": "verification p50 (ms, in-process)", "measured": v50, "target": 2, "pass": v50 <= 2},
    ]


def markdown(r: dict[str, Any]) -> str:
    p, m = r["points"], r["machine"]
    levels = list(p["tollway"])
    out = [
        "| Setup | " + " | ".join(f"req/s c={c} | p50 c={c}" for c in levels) + " |",
        "|---|" + "---:|---:|" * len(levels),
    ]
    label = {
        "tollway": "tollway gateway (paid: verify, forward, settle)",
        "official": "official x402 middleware + tollway's facilitator (paid)",
        "unpaid": "tollway, same route, API key (unpaid)",
    }
    for k in ("tollway", "official", "unpaid"):
        cells = [f"{p[k][c]['rps']:,.0f} | {p[k][c]['p50_ms']:.2f} ms" for c in levels]
        out.append(f"| {label[k]} | " + " | ".join(cells) + " |")
    v = r["verify_in_process"]
    out += [
        "",
        f"Run: revision `{m['revision']}`, {r['date'].replace('T', ' ')[:16]} UTC, {m['cpu']}, "
        f"{m['cores']} cores, {r['setup']['duration_s']:g} s per point.",
        "",
        "| Metric | Measured | Target | Result |",
        "|---|---:|---|---|",
        f"| tollway paid req/s / official stack's | {r['tollway_over_official']}x | >= 3x | "
        f"{'met' if r['tollway_over_official'] >= 3 else '**missed**'} |",
        f"| verification p50, in-process | {v['p50_ms']} ms (p99 {v['p99_ms']} ms) | ≤ 2 ms | "
        f"{'met' if v['p50_ms'] <= 2 else '**missed**'} |",
        f"| paid / unpaid req/s, same route | {r['paid_over_unpaid_rps']} | — | — |",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per point at c=16 only")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument(
        "--max-rps", type=float, default=2500, help="pre-sign enough authorizations for this rate"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    if a.quick:
        a.duration, a.levels = 3, [16]
    with tempfile.TemporaryDirectory() as d:
        res = run(a, Path(d))
    summarize(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    for t in res["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: {t['measured']} (target {t['target']})")
    print(f"settled payments: {res['setup']['settled_payments']}")
    print(f"wrote {a.out}\n\n--- suggested docs/benchmarks.md rows ---\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
