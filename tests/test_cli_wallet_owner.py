"""The CLI of budget requests, P&L and the autopilot, with --json and clear errors."""

# ruff: noqa: F811
from __future__ import annotations

import asyncio

from test_cli import cfg, run, runner  # noqa: F401  (the fixture `cfg`)
from tollway.cli.main import app
from tollway.runtime import Runtime
from tollway.settings import load_settings


def test_bootstrap_requests_approve_deny_pnl_and_autopilot(cfg: str) -> None:
    w = run(cfg, "wallet", "create", "--owner", "ada")
    run(cfg, "wallet", "topup", w["id"], "$2", "--from", "sys_funding")
    boot = run(cfg, "wallet", "bootstrap", w["id"], "--name", "new agent")
    assert boot["credential"].startswith("tw_boot_")

    async def ask(n: int) -> list[str]:
        rt = Runtime.build(load_settings(cfg))
        try:
            out = []
            for i in range(n):
                r = await rt.budget_requests.create(
                    boot["credential"], caps={"amount": "$1", "period": "weekly"}, purpose=f"job {i}"
                )
                out.append(r["id"])
            return out
        finally:
            await rt.close()

    a, b = asyncio.run(ask(2))
    assert [r["id"] for r in run(cfg, "wallet", "requests", "--status", "pending")["data"]] == [a, b]
    r = run(cfg, "wallet", "approve-request", a, "--caps", '{"amount": "$0.50", "period": "daily"}')
    assert r["status"] == "approved" and r["approved_caps"]["amount"] == 500_000
    assert run(cfg, "wallet", "approve-request", a, code=1)["error"]["code"] == "budget_request_not_pending"
    assert (
        run(cfg, "wallet", "approve-request", b, "--caps", "[1]", code=1)["error"]["code"] == "invalid_caps"
    )
    r = run(cfg, "wallet", "deny-request", b, "--reason", "one is enough")
    assert r["status"] == "denied" and r["reason"] == "one is enough"
    assert run(cfg, "wallet", "requests", "--status", "nope", code=1)["error"]["code"] == "invalid_status"
    p = run(cfg, "wallet", "pnl", w["id"])
    assert p["topups"] == 2_000_000 and p["net"] == 0 and p["revenue"]["total"] == 0
    assert run(cfg, "wallet", "pnl", w["id"], "--from", "nope", code=1)["error"]["code"] == "invalid_from"
    human = runner.invoke(app, ["--config", cfg, "wallet", "pnl", w["id"]])
    assert human.exit_code == 0 and "top-ups" in human.output, human.output
    s = run(cfg, "wallet", "autopilot", w["id"])
    assert s["enabled"] is False
    s = run(cfg, "wallet", "autopilot", w["id"], "--floor", "$1", "--teardown-window", "7")
    assert s["spend_floor"] == 1_000_000 and s["teardown_unprofitable"] == {
        "window_days": 7,
        "min_age_days": 3,
    }
    assert run(cfg, "wallet", "autopilot-check")["data"] == []  # $2 is above the floor
    bad = run(cfg, "wallet", "autopilot", w["id"], "--floor", "-1", code=1)
    assert bad["error"]["code"] == "invalid_autopilot"
