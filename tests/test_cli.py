"""The CLI: every command, with --json, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tollway.cli.main import app

runner = CliRunner()


@pytest.fixture
def cfg(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "tollway.toml"
    r = runner.invoke(app, ["init", "--path", str(path), "--no-database", "--json"])
    assert r.exit_code == 0, r.output
    text = path.read_text().replace('url = "sqlite:///.tollway/tollway.db"', f'url = "{db_url}"')
    path.write_text(text)
    return str(path)


def run(cfg: str, *args: str, code: int = 0) -> Any:
    r = runner.invoke(app, ["--config", cfg, *args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def test_init_writes_token_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    first = json.loads(runner.invoke(app, ["init", "--path", str(path), "--json"]).stdout)
    assert first["created"] and len(first["admin_token"]) >= 32
    assert first["admin_token"] in path.read_text()
    assert oct(path.stat().st_mode)[-3:] == "600"
    again = json.loads(runner.invoke(app, ["init", "--path", str(path), "--json"]).stdout)
    assert again == {"path": str(path), "created": False}


def test_init_creates_the_database_so_the_first_serve_is_a_restart(tmp_path: Path) -> None:
    """`tollway init` migrates the database its config names (next to the config), so the
    first `tollway serve` finds it current; --no-database leaves that to serve."""
    path = tmp_path / "home" / "tollway.toml"
    path.parent.mkdir()
    r = json.loads(runner.invoke(app, ["init", "--path", str(path), "--json"]).stdout)
    from tollway.core import migrate

    assert r["database_revision"] == migrate.HEAD
    assert (path.parent / ".tollway" / "tollway.db").is_file()
    assert run(str(path), "migrate") == {"from": migrate.HEAD, "to": migrate.HEAD, "changed": False}
    other = tmp_path / "other" / "tollway.toml"
    other.parent.mkdir()
    r = json.loads(runner.invoke(app, ["init", "--path", str(other), "--no-database", "--json"]).stdout)
    assert r["database_revision"] is None and not (other.parent / ".tollway").exists()


def test_full_flow(cfg: str) -> None:
    assert run(cfg, "migrate")["to"] is not None
    c = run(cfg, "customers", "create", "--name", "Ada", "--credit", "$2.50")
    assert c["balance"] == 2_500_000
    assert [x["id"] for x in run(cfg, "customers", "list")["data"]] == [c["id"]]

    k = run(cfg, "keys", "create", "--customer", c["id"], "--scope", "balance:read", "--scope", "inference")
    assert k["key"].startswith("tw_") and k["scopes"] == ["balance:read", "inference"]
    listed = run(cfg, "keys", "list", "--customer", c["id"])["data"]
    assert [x["id"] for x in listed] == [k["id"]] and "key" not in listed[0]
    assert run(cfg, "keys", "revoke", k["id"])["revoked"] is True

    p = run(
        cfg,
        "ledger",
        "transfer",
        "--from",
        c["account_id"],
        "--to",
        "sys_revenue",
        "--amount",
        "$1",
        "--pending",
    )
    assert p["kind"] == "pending" and p["amount"] == 1_000_000
    post = run(cfg, "ledger", "post", p["id"], "--amount", "400000")
    assert post["amount"] == 400_000
    q = run(
        cfg,
        "ledger",
        "transfer",
        "--from",
        c["account_id"],
        "--to",
        "sys_revenue",
        "--amount",
        "5",
        "--pending",
    )
    assert run(cfg, "ledger", "void", q["id"])["kind"] == "void_pending"

    bal = run(cfg, "ledger", "balances")
    assert bal["sum_of_balances"] == 0
    mine = run(cfg, "ledger", "balances", "--account", c["account_id"])["data"][0]
    assert mine["balance"] == 2_100_000
    hist = run(cfg, "ledger", "history", c["account_id"])["data"]
    assert [t["kind"] for t in hist] == ["void_pending", "pending", "post_pending", "pending", "posted"]


def test_errors_are_typed_and_exit_nonzero(cfg: str) -> None:
    e = run(cfg, "ledger", "transfer", "--from", "nope", "--to", "sys_revenue", "--amount", "5", code=1)
    assert e["error"]["code"] == "account_not_found"
    e = run(
        cfg, "ledger", "transfer", "--from", "sys_funding", "--to", "sys_revenue", "--amount", "1.5", code=1
    )
    assert e["error"]["code"] == "invalid_amount"
    e = run(cfg, "keys", "revoke", "key_nope", code=1)
    assert e["error"]["code"] == "api_key_not_found"
    assert run(cfg, "ledger", "balances")["sum_of_balances"] == 0


def test_bad_config_exits_2_with_file_key_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'x'\n")
    r = runner.invoke(app, ["--config", str(path), "migrate"])
    assert r.exit_code == 2
    assert str(path) in r.output and "server.port" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["--config", str(path), "migrate", "--json"])
    assert json.loads(r.stdout)["error"]["param"] == "server.port"


def test_human_output_has_tables(cfg: str) -> None:
    r = runner.invoke(app, ["--config", cfg, "ledger", "balances"])
    assert r.exit_code == 0 and "sys_revenue" in r.output and "sum of balances: $0.000000 (ok)" in r.output


def test_logs_lists_the_request_log_with_filters(cfg: str, db_url: str) -> None:
    import asyncio

    from conftest import settings_for
    from tollway.runtime import Runtime

    run(cfg, "migrate")

    async def seed() -> None:
        rt = Runtime.build(settings_for(db_url))
        for status, model in ((200, "m1"), (429, "m1"), (200, "m2")):
            e = rt.gateway.log.start("chat.completions")
            e.model, e.status, e.customer_id = model, status, "cus_x"
            rt.gateway.log.record(e)
        await rt.close()  # flushes the log

    asyncio.run(seed())
    rows = run(cfg, "logs")["data"]
    assert [r["model"] for r in rows] == ["m2", "m1", "m1"]  # newest first
    assert [r["status"] for r in run(cfg, "logs", "--status", "429")["data"]] == [429]
    assert len(run(cfg, "logs", "--model", "m1", "--limit", "1")["data"]) == 1
    r = runner.invoke(app, ["--config", cfg, "logs"])
    assert r.exit_code == 0 and "m2" in r.output


def test_devnet_fund_balance_new_payer_and_revenue(cfg: str) -> None:
    addr = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    funded = run(cfg, "devnet", "fund", addr, "$2.5")
    assert (funded["amount"], funded["balance"]) == (2_500_000, 2_500_000)
    assert run(cfg, "devnet", "fund", addr, "1000")["balance"] == 2_501_000
    assert run(cfg, "devnet", "balance", addr) == {"address": addr, "balance": 2_501_000}
    payer = run(cfg, "devnet", "new-payer", "--fund", "$1")
    assert payer["balance"] == 1_000_000 and payer["private_key"].startswith("0x")
    assert run(cfg, "devnet", "fund", "0x123", "5", code=1)["error"]["code"] == "invalid_address"
    assert run(cfg, "devnet", "fund", addr, "lots", code=1)["error"]["code"] == "invalid_amount"
    rev = run(cfg, "revenue")
    assert (rev["payments"], rev["amount"], rev["recent"]) == (0, 0, [])


def test_init_demo_writes_a_paid_route_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "tollway.toml"
    r = json.loads(runner.invoke(app, ["init", "--path", str(path), "--demo", "--json"]).stdout)
    from tollway.settings import load_settings

    s = load_settings(str(path))
    [rule] = s.x402.rules
    assert (rule.path, rule.origin, rule.price) == ("/demo/weather", "demo", "$0.001")
    assert s.x402.pay_to == r["demo_pay_to"]


def test_billing_commands(cfg: str) -> None:
    text = Path(cfg).read_text()
    text += '\n[[billing.plans]]\nlookup_key = "free"\nfeatures = ["ai.chat"]\n'
    text += (
        '\n[[billing.plans]]\nlookup_key = "pro"\nprice = "$1"\nincluded_neurons = 1000\nfeatures = ["*"]\n'
    )
    Path(cfg).write_text(text)
    assert [p["lookup_key"] for p in run(cfg, "plans")["data"]] == ["free", "pro"]
    c = run(cfg, "customers", "create", "--name", "Ada", "--credit", "$2.50")
    assert run(cfg, "subscription", "show", c["id"])["plan"] == "free"
    s = run(cfg, "subscription", "set", c["id"], "pro")
    assert (s["plan"], s["status"]) == ("pro", "active")
    err = run(cfg, "subscription", "set", c["id"], "gold", code=1)["error"]
    assert err["code"] == "plan_not_found"
    g = run(cfg, "credits", "grant", c["id"], "$1", "--priority", "5", "--expires-days", "3")
    assert g["amount"] == 1_000_000 and g["priority"] == 5 and g["category"] == "promotional"
    assert [x["id"] for x in run(cfg, "credits", "list", c["id"])["data"]] == [g["id"]]
    pv = run(cfg, "invoice", "preview", "--customer", c["id"])
    assert (
        pv["plan"] == "pro" and pv["lines"][0]["amount"] == 1_000_000 and pv["credit_remaining"] == 1_000_000
    )
    assert run(cfg, "subscription", "cancel", c["id"])["cancel_at_period_end"] is True
    assert run(cfg, "rollups", "run", "--day", "2026-11-20")["rows"] == 0
    assert run(cfg, "rollups", "list", "--start", "2026-11-01", "--end", "2026-11-30")["data"] == []
    assert run(cfg, "rollups", "run", "--day", "yesterday", code=1)["error"]["code"] == "invalid_day"


def test_wallet_and_approvals_commands(cfg: str) -> None:
    c = run(cfg, "customers", "create", "--name", "Ada", "--credit", "$5")
    w = run(cfg, "wallet", "create", "--customer", c["id"], "--policy", '{"approval_threshold": "$1"}')
    assert w["balance"] == 0 and w["policy"]["approval_threshold"] == 1_000_000
    assert run(cfg, "wallet", "topup", w["id"], "$2")["balance"] == 2_000_000
    t = run(
        cfg, "wallet", "grant", w["id"], "--name", "bot", "--max-per-payment", "$1.50", "--category", "dns"
    )
    assert t["token"].startswith("tw_agt_") and t["limits"]["max_per_payment"] == 1_500_000
    assert [x["id"] for x in run(cfg, "wallet", "tokens", w["id"])["data"]] == [t["id"]]
    assert run(cfg, "wallet", "show", w["id"])["available"] == 2_000_000
    err = run(cfg, "wallet", "create", "--owner", "ops", "--policy", "{nope", code=1)["error"]
    assert err["code"] == "invalid_policy"
    assert run(cfg, "wallet", "topup", "wal_nope", "$1", code=1)["error"]["code"] == "wallet_not_found"
    assert run(cfg, "approvals", "list")["data"] == []
    assert (
        run(cfg, "approvals", "approve", "wauth_nope", code=1)["error"]["code"] == "authorization_not_found"
    )
    assert run(cfg, "wallet", "revoke", t["id"])["revoked"] is True
    events = [e["event"] for e in run(cfg, "wallet", "audit", w["id"])["data"]]
    assert events[:3] == ["token_revoked", "token_granted", "topup"]


def test_a_command_outside_the_home_finds_its_database_or_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a new empty database made silently (it used to answer account_not_found,
    or $0 for a funded payer): the home's database, or database_not_found."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(home)
    assert runner.invoke(app, ["init", "--json"]).exit_code == 0
    assert runner.invoke(app, ["migrate", "--json"]).exit_code == 0
    c = json.loads(runner.invoke(app, ["customers", "create", "--name", "Ada", "--json"]).stdout)

    monkeypatch.chdir(elsewhere)
    for env, args in (({"TOLLWAY_HOME": str(home)}, []), ({}, ["-c", str(home / "tollway.toml")])):
        r = runner.invoke(app, [*args, "customers", "list", "--json"], env=env)
        assert r.exit_code == 0, r.output
        assert [x["id"] for x in json.loads(r.stdout)["data"]] == [c["id"]]
    r = runner.invoke(app, ["customers", "list", "--json"], env={"TOLLWAY_HOME": None})
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["code"] == "database_not_found"
    assert list(elsewhere.iterdir()) == []  # nothing created here


def test_init_demo_tool_follows_the_servers_port(tmp_path: Path) -> None:
    from tollway.agents.service import self_url
    from tollway.settings import load_settings

    path = tmp_path / "tollway.toml"
    assert runner.invoke(app, ["init", "--path", str(path), "--demo", "--json"]).exit_code == 0
    s = load_settings(str(path))
    [tool] = s.agents.definitions[0].tools
    assert tool.url == "/demo/orders/{order_id}"  # a path: this server
    s.server.port = 8799  # what `serve --port 8799` sets
    assert self_url(s) == "http://127.0.0.1:8799"
