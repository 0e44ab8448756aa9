"""``tollway provision``: the trademark guard's verdict, overrides (audited),
listings, zone files and the reaper, with --json and clear errors."""

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
    assert runner.invoke(app, ["init", "--path", str(path), "--json"]).exit_code == 0
    text = path.read_text().replace('url = "sqlite:///.tollway/tollway.db"', f'url = "{db_url}"')
    path.write_text(text.replace("edge_port = 8788", "edge_port = 0"))
    return str(path)


def run(cfg: str, *args: str, code: int = 0) -> Any:
    r = runner.invoke(app, ["--config", cfg, *args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def test_check_override_list_and_reap(cfg: str) -> None:
    v = run(cfg, "provision", "check", "paypal-login.com")
    assert v["available"] is False and v["blocked"]["mark"] == "paypal" and v["reason"] == "trademark"
    v = run(cfg, "provision", "check", "my-own-shop.com")
    assert v["available"] is True and v["price"] == 10_440_000 and v["blocked"] is None
    err = run(cfg, "provision", "check", "bad_name.com", code=1)
    assert err["error"]["code"] == "invalid_name"
    wal = run(cfg, "wallet", "create", "--owner", "ops")
    o = run(
        cfg, "provision", "override", "paypal-login.com", "--wallet", wal["id"], "--reason", "PayPal's agent"
    )
    assert o["mark"] == "paypal" and o["wallet_id"] == wal["id"]
    assert (
        run(
            cfg,
            "provision",
            "override",
            "paypal-login.com",
            "--wallet",
            wal["id"],
            "--reason",
            "again",
            code=1,
        )["error"]["code"]
        == "override_exists"
    )
    assert [x["name"] for x in run(cfg, "provision", "overrides")["data"]] == ["paypal-login.com"]
    audit = run(cfg, "wallet", "audit", wal["id"])
    assert any(e["event"] == "trademark_override" for e in audit["data"])
    assert run(cfg, "provision", "domains")["data"] == []
    assert run(cfg, "provision", "deployments")["data"] == []
    rep = run(cfg, "provision", "reap", "--apply")
    assert rep["object"] == "reap_report" and rep["saved"] == 0
    human = runner.invoke(app, ["--config", cfg, "provision", "reap"])
    assert human.exit_code == 0 and "would save" in human.output


def test_tick_and_dues(cfg: str) -> None:
    rep = run(cfg, "provision", "tick")
    assert (rep["charged"], rep["renewed"], rep["failed"], rep["suspended"]) == ([], [], [], [])
    assert rep["reclaim"]["saved"] == 0
    assert run(cfg, "provision", "dues")["data"] == []
    human = runner.invoke(app, ["--config", cfg, "provision", "tick"])
    assert human.exit_code == 0 and "recurring charges" in human.output
    assert runner.invoke(app, ["--config", cfg, "provision", "dues"]).exit_code == 0
