"""An agent prices its deployment and earns (issue 22 §2, §3): a rule made
with its token puts the paywall in front of its host at the edge (the same
Paywall as the gateway: 402, verify, claim, forward to the worker, settle
once); the payment credits its wallet less the operator's fee, shows in
``GET /v1/wallet``, and is spent like any balance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import err
from earnings_support import HOST, balance, deploy, edge, pay, rule, shop, wallet_key
from provision_support import Agent, hello
from tollway.core.schema import usage_events as U
from x402_gateway_support import header, required
from x402_helpers import Payer

pytestmark = pytest.mark.slow


@pytest.fixture
async def agent(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Agent]:
    wallet_key(monkeypatch)
    async with shop(db_url, tmp_path / "prov") as a:
        yield a


async def test_a_paid_route_at_the_edge_credits_the_wallet_less_the_fee_once(agent: Agent) -> None:
    r = await rule(agent, name="paid", host=HOST, path="/paid/*", price="$0.01", description="A paid hello")
    assert r.status_code == 201, r.text
    made = r.json()
    me = (await agent.http.get("/v1/wallet", headers=agent.auth)).json()
    assert made["pay_to"] == me["evm_address"] and made["host"] == HOST and "origin" not in made
    # A route no rule prices passes as it came; the priced one asks to be paid, to the wallet.
    free = await edge(agent, "/free")
    assert free.status_code == 200 and free.text == "hello v1 /free"
    r = await edge(agent, "/paid/x")
    assert r.status_code == 402
    (accepts,) = required(r)["accepts"]
    assert accepts["payTo"] == me["evm_address"] and accepts["amount"] == "10000"
    payer = Payer()
    await agent.rt.devnet.fund(payer.address, 50_000)
    before, fees = await balance(agent, agent.wallet["account_id"]), await balance(agent, "sys_fees")
    r, payment = await pay(agent, payer, "/paid/x")
    assert r.status_code == 200 and r.text == "hello v1 /paid/x"
    assert "payment-response" in r.headers
    assert await balance(agent, agent.wallet["account_id"]) == before + 9_500  # gross 10_000, fee 5%
    assert await balance(agent, "sys_fees") == fees + 500
    # The same payment again: refused, nothing runs, nothing moves.
    again = await edge(agent, "/paid/x", **{"payment-signature": header(payment)})
    assert again.status_code == 402
    assert await balance(agent, agent.wallet["account_id"]) == before + 9_500
    assert await agent.rt.devnet.balance(payer.address) == 40_000
    async with agent.rt.engine.connect() as conn:
        (ev,) = (await conn.execute(select(U).where(U.c.meter == "x402_earnings"))).all()
    meta = json.loads(ev.metadata)
    gross = await agent.rt.ledger.get_transfer(ev.transfer_id)
    assert ev.amount == gross.amount == 10_000 and gross.credit_account_id == agent.wallet["account_id"]
    assert meta["rule_id"] == made["id"] and meta["host"] == HOST and meta["path"] == "/paid/x"
    assert meta["wallet_id"] == agent.wallet["id"]
    me = (await agent.http.get("/v1/wallet", headers=agent.auth)).json()
    assert me["earnings"]["all_time"] == {"gross": 10_000, "fees": 500, "net": 9_500}
    assert me["earnings"]["this_month"] == {"gross": 10_000, "fees": 500, "net": 9_500}
    assert me["balance"] == me["available"] == before + 9_500
    assert sum(a.balance for a in await agent.rt.ledger.accounts()) == 0  # the ledger still sums


async def test_rule_changes_and_deletion_reach_the_edge(agent: Agent) -> None:
    made = (await rule(agent, name="paid", host=HOST, path="/paid", price="$0.01")).json()
    assert (await edge(agent, "/paid")).status_code == 402
    r = await agent.http.patch(f"/v1/x402/rules/{made['id']}", json={"price": "$0.02"}, headers=agent.auth)
    assert r.status_code == 200 and r.json()["price"] == "$0.02" and r.json()["path"] == "/paid"
    assert required(await edge(agent, "/paid"))["accepts"][0]["amount"] == "20000"
    r = await agent.http.put(
        f"/v1/x402/rules/{made['id']}", json={"name": "paid", "host": HOST, "path": "/other", "price": "1"},
        headers=agent.auth,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert (await edge(agent, "/paid")).text == "hello v1 /paid"
    assert (await edge(agent, "/other")).status_code == 402
    listed = (await agent.http.get("/v1/x402/rules", headers=agent.auth)).json()["data"]
    assert [x["id"] for x in listed] == [made["id"]]
    r = await agent.http.delete(f"/v1/x402/rules/{made['id']}", headers=agent.auth)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await edge(agent, "/other")).text == "hello v1 /other"
    err(await agent.http.get(f"/v1/x402/rules/{made['id']}", headers=agent.auth), 404, "rule_not_found")


async def test_earnings_pay_for_the_next_deploy(agent: Agent) -> None:
    poor = await Agent(agent.rt, agent.http).setup(fund=10_000)  # exactly one deploy
    await deploy(poor, "kiosk")
    r = await poor.post("/deployments", {"name": "kiosk", "entrypoint": "app:app", "bundle": hello("v2")})
    assert r.status_code == 402, r.text  # nothing left
    host = "kiosk.tollway.localhost"
    assert (await rule(poor, name="p", host=host, path="/p", price="$0.02")).status_code == 201
    payer = Payer()
    await agent.rt.devnet.fund(payer.address, 20_000)
    r, _ = await pay(poor, payer, "/p", host)
    assert r.status_code == 200
    assert await poor.available() == 19_000
    r = await poor.post("/deployments", {"name": "kiosk", "entrypoint": "app:app", "bundle": hello("v2")})
    assert r.status_code == 201, r.text  # paid from its earnings
    assert await poor.available() == 9_000
    assert (await edge(poor, "/free", host)).text == "hello v2 /free"


async def test_a_name_of_the_wallets_domain_bound_to_its_deployment_is_priced_too(agent: Agent) -> None:
    assert (await agent.post("/domains", {"domain": "shop-demo.dev"})).status_code == 201
    r = await agent.post("/deployments/shop/hostnames", {"hostname": "www.shop-demo.dev"})
    assert r.status_code == 200, r.text
    assert (
        await rule(agent, name="www", host="WWW.Shop-Demo.dev", path="/p", price="$0.01")
    ).status_code == 201
    # A name within the domain that nothing serves yet may be priced; the edge has nothing there.
    assert (await rule(agent, name="api", host="api.shop-demo.dev", path="/*", price="1")).status_code == 201
    assert (await edge(agent, "/x", "api.shop-demo.dev")).status_code == 404
    other = await Agent(agent.rt, agent.http).setup()
    r = await rule(other, name="www", host="www.shop-demo.dev", path="/p", price="1")
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_owned"
    payer = Payer()
    await agent.rt.devnet.fund(payer.address, 10_000)
    before = await balance(agent, agent.wallet["account_id"])
    r, _ = await pay(agent, payer, "/p", "www.shop-demo.dev")
    assert r.status_code == 200 and r.text == "hello v1 /p"
    assert await balance(agent, agent.wallet["account_id"]) == before + 9_500
