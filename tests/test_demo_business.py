"""``tollway demo business`` (issue 22 §8): the whole loop on the embedded defaults,
run as the CLI runs it; its P&L sums, the operator's fee is exact, inference and
hosting are real costs, and the ledger's zero-sum check passes. Without a sandbox
or without the x402 SDK it stops with a clear message and a failing exit code."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tollway.cli.main import app
from tollway.core.money import parse_amount
from tollway.provision.sandbox import Sandbox, SandboxUnavailable

SANDBOX = os.getuid() == 0 and shutil.which("bwrap") is not None
needs_sandbox = pytest.mark.skipif(
    not SANDBOX, reason="the demo deploys into bubblewrap: needs root and bwrap"
)


@pytest.fixture(autouse=True)
def wallet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())


def run(*args: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(app, ["demo", "business", *args, "--json"])
    return r.exit_code, json.loads(r.stdout)


def check(out: dict[str, Any], customers: int) -> dict[str, Any]:
    assert out["ok"] is True, out.get("error")
    pnl, p = out["pnl"], out["pricing"]
    rev, costs = pnl["revenue"], pnl["costs"]
    by = costs["by_category"]
    assert rev["total"] == sum(rev["by_route"].values())
    assert costs["total"] == sum(by.values())
    assert pnl["net"] == rev["total"] - costs["total"]
    price = parse_amount("$0.03", "price")
    assert p["price"] == price and list(rev["by_route"]) == [f"{out['host']}/answer"]
    assert rev["total"] == customers * price
    assert by["fees"] == customers * (price * p["take_rate_bps"] // 10_000) == rev["total"] * 500 // 10_000
    assert by["inference"] > 0 and by["hosting"] > 10_000  # the deploy, and metered worker-seconds
    (hosting,) = [s for s in out["steps"] if s["step"] == "hosting"]
    assert hosting["metered"] == by["hosting"] - 10_000 > 0
    assert by["domains"] == 1_000_000 and by["dns"] == 1_000
    assert out["ledger"]["ok"] and out["ledger"]["sum_of_balances"] == 0
    ident = out["balance_identity"]
    assert ident["ok"] and ident["balance_change"] == pnl["net"] + pnl["topups"] - pnl["withdrawals"]
    assert pnl["topups"] == 5_000_000 and pnl["committed"] == 0
    assert out["customers"] == {"paid": customers, "customers": customers}
    steps = [s["step"] for s in out["steps"]]
    assert steps == ["owner", "budget_request", "budget_approved", "domain", "deploy", "bind", "price",
                     "customers", "hosting"]  # fmt: skip
    return pnl


@needs_sandbox
def test_the_demo_runs_the_loop_and_its_pnl_sums(tmp_path: Path) -> None:
    code, out = run("--customers", "5", "--home", str(tmp_path / "home"))
    assert code == 0
    check(out, 5)
    agent_steps = [s for s in out["steps"] if s["step"] in ("domain", "deploy", "bind", "price")]
    assert all("as the agent (token tw_agt_" in s["text"] for s in agent_steps)
    assert out["home"] == str(tmp_path / "home") and (tmp_path / "home" / "tollway.toml").exists()


@needs_sandbox
@pytest.mark.slow
def test_the_full_demo_ends_in_profit() -> None:
    code, out = run()
    assert code == 0 and out["home"] is None  # a temp home, removed
    pnl = check(out, 50)
    assert pnl["net"] > 0
    assert out["pricing"]["break_even_customers"] <= 50


def test_without_a_sandbox_it_stops_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(self: Sandbox, uid: int) -> None:
        raise SandboxUnavailable("bubblewrap cannot set up a sandbox here")

    monkeypatch.setattr(Sandbox, "check", refuse)
    code, out = run("--customers", "1", "--home", str(tmp_path))
    assert code == 1 and out["ok"] is False
    assert "bubblewrap cannot set up a sandbox here" in out["error"] and "--unsafe-no-sandbox" in out["error"]
    assert "steps" not in out and not list(tmp_path.rglob("*.db"))  # nothing ran


def test_without_the_x402_sdk_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "x402", None)  # import x402 raises ImportError
    code, out = run("--customers", "1")
    assert code == 1 and out["ok"] is False
    assert "pip install 'tollway[demo]'" in out["error"]


def test_unsafe_no_sandbox_runs_the_loop_without_bubblewrap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where bubblewrap cannot run, --unsafe-no-sandbox deploys the app unsandboxed
    (as tollway's user), says so, and the loop still closes and sums."""

    def refuse(self: Sandbox, uid: int) -> None:
        raise AssertionError("the sandbox is not used with --unsafe-no-sandbox")

    monkeypatch.setattr(Sandbox, "check", refuse)
    # A home whose path is too long for the AI binding's socket address (108 bytes)
    # unless the worker's run directory is linked from a short path.
    home = tmp_path / ("deep-" * 8) / "home"
    code, out = run("--customers", "2", "--home", str(home), "--unsafe-no-sandbox")
    assert code == 0, out.get("error")
    check(out, 2)
    assert "UNSAFE: [provision] unsafe_no_sandbox = true" in caplog.text
