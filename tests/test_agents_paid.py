"""A paid tool: the agent's call goes through the wallet broker, which pays
the x402 price from the agent's wallet (tollway's own paid demo route on
devnet, over real HTTP); the session's cost includes what the tool cost."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import httpx
import pytest

from agent_helpers import AgentModel, ToolServer, agent_settings, tool
from conftest import ADMIN
from threaded import ThreadServer, free_port
from tollway.api.app import create_app
from x402_helpers import PAY_TO

pytest_plugins = ["agent_support"]

RULE = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}


def test_paid_tool_is_paid_by_the_broker_from_the_agents_wallet(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    agent_model: tuple[AgentModel, str],
    tool_server: tuple[ToolServer, str],
) -> None:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    paid = tool("weather", url + "/demo/weather?city={order_id}", paid=True, max_price="$0.002")
    base = agent_settings(
        db_url, agent_model[1], tool_server[1], tmp_path, tools=[paid], wallet_token_env="AGENT_WALLET"
    )  # type: ignore[arg-type]
    settings = type(base).model_validate(
        {
            **base.model_dump(),
            "x402": {**base.x402.model_dump(), "pay_to": PAY_TO, "rules": [RULE]},
            "wallets": {**base.wallets.model_dump(), "broker_allow": ["127.0.0.1"]},
        }
    )
    with ThreadServer(create_app(settings), port=port), httpx.Client(base_url=url, timeout=60) as h:
        wal = h.post(
            "/admin/wallets", json={"owner": "support-agent", "with_key": True}, headers=ADMIN
        ).json()
        assert (
            h.post(f"/admin/wallets/{wal['id']}/topup", json={"amount": "$1"}, headers=ADMIN).status_code
            == 200
        )
        token = h.post(f"/admin/wallets/{wal['id']}/tokens", json={"limits": {}}, headers=ADMIN).json()[
            "token"
        ]
        monkeypatch.setenv("AGENT_WALLET", token)
        c = h.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN).json()
        h.post(
            "/admin/ledger/transfers",
            json={
                "debit_account_id": "sys_funding",
                "credit_account_id": c["account_id"],
                "amount": 1_000_000,
            },
            headers=ADMIN,
        )
        auth = {
            "Authorization": "Bearer "
            + h.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN).json()["key"]
        }
        assert h.post("/v1/agents/support/sessions", json={"id": "p1"}, headers=auth).status_code == 201
        r = h.post(
            "/v1/agents/support/sessions/p1/messages", json={"content": "weather for O1234"}, headers=auth
        )
        assert r.status_code == 200, r.text
        [call] = r.json()["tool_calls"]
        assert call["status"] == "ok" and call["cost"] == 1000, call
        assert "O1234" in call["response"] and token not in r.text
        s = h.get("/v1/agents/support/sessions/p1", headers=auth).json()
        assert s["usage"]["cost"] >= 1000 and s["usage"]["tool_calls"] == 1
        assert h.get(f"/admin/wallets/{wal['id']}", headers=ADMIN).json()["available"] == 1_000_000 - 1000
        # Without the token in the environment, the call fails, is logged, and the turn goes on.
        monkeypatch.delenv("AGENT_WALLET")
        r = h.post(
            "/v1/agents/support/sessions/p1/messages", json={"content": "weather for O1235"}, headers=auth
        )
        [call] = r.json()["tool_calls"]
        assert call["status"] == "error" and "wallet_token_missing" in call["error"] and call["cost"] == 0
        assert h.get(f"/admin/wallets/{wal['id']}", headers=ADMIN).json()["available"] == 1_000_000 - 1000
