"""The official ``x402`` SDK's client pays an agent-owned route on a local
deployment through the edge (issue 22 §2, §3): it reads the 402, signs the
payment to the wallet's address, and gets the deployment's answer; the
wallet is credited the price less the operator's fee."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client

from earnings_support import HOST, balance, rule, shop, wallet_key
from provision_support import Agent
from tollway.x402.config import DEVNET_ASSET
from x402_helpers import NETWORK

pytestmark = pytest.mark.slow
SPEND = {"allowed_assets": [{"network": NETWORK, "asset": DEVNET_ASSET, "max_amount_per_payment": "1000000"}]}


@pytest.fixture
async def agent(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Agent]:
    wallet_key(monkeypatch)
    async with shop(db_url, tmp_path / "prov", take_rate_bps=250) as a:
        yield a


async def test_the_official_client_pays_an_agents_route_through_the_edge(agent: Agent) -> None:
    assert (await rule(agent, name="hi", host=HOST, path="/hi", price="$0.004")).status_code == 201
    payer = Account.create()
    await agent.rt.devnet.fund(payer.address, 10_000)
    before = await balance(agent, agent.wallet["account_id"])
    client = x402Client()
    register_exact_evm_client(client, payer)
    client.set_spend_controls(SPEND)
    url = f"http://127.0.0.1:{agent.rt.provision.edge_port}/hi"
    async with x402HttpxClient(client, timeout=30) as http:
        r = await http.get(url, headers={"host": HOST})
        assert r.status_code == 200 and r.text == "hello v1 /hi", r.text
        assert "payment-response" in r.headers
        free = await http.get(url.replace("/hi", "/free"), headers={"host": HOST})
        assert free.status_code == 200 and free.text == "hello v1 /free"
    assert await agent.rt.devnet.balance(payer.address) == 6_000
    assert await balance(agent, agent.wallet["account_id"]) == before + 4_000 - 100  # 2.5% of 4_000
