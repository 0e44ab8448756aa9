"""``tollway init --demo``'s support agent, served for real (uvicorn on a
port, its start-up ingesting the shipped knowledge base with the real
embeddings model), its order-status tool served by tollway itself; and the
``tollway agents`` commands."""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from agent_helpers import AgentModel
from conftest import ADMIN, ADMIN_TOKEN
from threaded import ThreadServer, free_port
from tollway.cli.main import app
from tollway.settings import Settings

pytest_plugins = ["agent_support"]
runner = CliRunner()


def run(cfg: Path, *args: str, code: int = 0) -> Any:
    r = runner.invoke(app, ["--config", str(cfg), *args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_demo_support_agent_end_to_end(
    db_url: str, tmp_path: Path, agent_model: tuple[AgentModel, str]
) -> None:
    cfg = tmp_path / "tollway.toml"
    assert runner.invoke(app, ["init", "--path", str(cfg), "--demo", "--json"]).exit_code == 0
    demo = Settings.model_validate(tomllib.loads(cfg.read_text()))
    [support] = demo.agents.definitions
    assert (
        demo.agents.demo
        and support.retrieval.index == "support-kb"
        and support.tools[0].name == "order_status"
    )
    # The same config, on a free port, a test database and the fast stand-in model.
    port = free_port()
    text = cfg.read_text()
    text = text.replace('url = "sqlite:///.tollway/tollway.db"', f'url = "{db_url}"')
    text = re.sub(r'^token = ".*"$', f'token = "{ADMIN_TOKEN}"', text, count=1, flags=re.M)
    # The tool's URL is a path: it follows the port the server runs on.
    text = re.sub(r"^port = 8787\b", f"port = {port}", text, count=1, flags=re.M)
    text = text.replace('model = "smollm2-135m-instruct"', 'model = "agent-model"')
    text += f'''
[[models]]
name = "agent-model"
task = "chat"
backend = "openai"
base_url = "{agent_model[1]}"
n_ctx = 8192
neurons_per_m_input = 100000
neurons_per_m_output = 200000
'''
    cfg.write_text(text)
    from tollway.api.app import create_app
    from tollway.settings import load_settings

    settings = load_settings(str(cfg))
    assert any(m.name == "smollm2-135m-instruct" for m in settings.models)
    with ThreadServer(create_app(settings), port=port) as srv:
        c = httpx.post(srv.url + "/admin/customers", json={"name": "Ada"}, headers=ADMIN).json()
        httpx.post(
            srv.url + "/admin/ledger/transfers",
            json={
                "debit_account_id": "sys_funding",
                "credit_account_id": c["account_id"],
                "amount": 1_000_000,
            },
            headers=ADMIN,
        )
        key = httpx.post(srv.url + "/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(srv.url + "/demo/orders/A1001").json()["status"] == "shipped"
        assert httpx.get(srv.url + "/demo/orders/Z9").status_code == 404
        # The knowledge base is ingested in the background after start-up (/healthz says when).
        deadline = time.monotonic() + 120
        while httpx.get(srv.url + "/healthz").json()["background"].get("demo_ingest") != "done":
            assert time.monotonic() < deadline, "the demo's ingest did not finish"
            time.sleep(0.1)
        base = srv.url + "/v1/agents/support/sessions"
        assert httpx.post(base, json={"id": "demo"}, headers=auth).status_code == 201
        r = httpx.post(
            base + "/demo/messages", json={"content": "Where is my order A1001?"}, headers=auth, timeout=60
        )
        out = r.json()
        assert r.status_code == 200 and out["tool_calls"][0]["status"] == "ok", r.text
        assert "1Z999AA10123456784" in out["reply"]["content"]
        assert out["reply"]["citations"] and out["reply"]["citations"][0]["doc"] in (
            "shipping",
            "returns",
            "accounts",
        )
        r = httpx.post(
            base + "/demo/messages", json={"content": "I will call my lawyer"}, headers=auth, timeout=60
        )
        assert r.json()["status"] == "escalated"
    # The CLI sees what the server did.
    assert [a["name"] for a in run(cfg, "agents", "list")["data"]] == ["support"]
    [esc] = run(cfg, "agents", "escalations")["data"]
    assert esc["reason"] == "keyword"
    answered = run(cfg, "agents", "reply", esc["id"], "A person here: how can I help?", "--by", "sam")
    assert answered["status"] == "active"
    shown = run(cfg, "agents", "show", "support", "demo")
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant", "user", "assistant", "human"]
    u = run(cfg, "agents", "usage", "support")
    assert u["sessions"] == 1 and u["turns"] == 3 and u["tool_calls"] == 1 and u["retrievals"] == 1
    assert run(cfg, "agents", "sessions", "support")["data"][0]["id"] == "demo"
    assert [v["version"] for v in run(cfg, "agents", "versions", "support")["data"]] == [1]
    assert run(cfg, "agents", "ingest", "support", code=1)["error"]["code"] == "missing_documents"
    doc = tmp_path / "faq.md"
    doc.write_text("# FAQ\n\nWe are open on weekdays from 9 to 5.")
    assert run(cfg, "agents", "ingest", "support", str(doc))["chunks"] == 1
    assert run(cfg, "agents", "show", "support", "nope", code=1)["error"]["code"] == "session_not_found"
