"""Earnings settle exactly (issue 22 §3): a payment for an agent-owned rule is
one linked chain, payer → wallet (gross, meter ``x402_earnings``) and wallet →
``sys_fees`` (the operator's take, rounded down); gross == net + fee for every
amount and take rate, the ledger still sums to zero, and one authorization
settled at once from several processes credits the wallet once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st

from conftest import settings_for
from processes import run_together
from tollway.core.money import MAX_AMOUNT
from tollway.runtime import Runtime
from tollway.x402.earnings import BPS, FEE_ACCOUNT, Credit, fee_of, settlement_chain
from tollway.x402.front import Front
from x402_gateway_support import send_raw
from x402_helpers import Payer, requirements


@hypothesis.given(st.integers(0, MAX_AMOUNT), st.integers(0, BPS))
def test_the_fee_is_a_whole_share_rounded_down_and_net_plus_fee_is_gross(gross: int, bps: int) -> None:
    fee = fee_of(gross, bps)
    assert 0 <= fee <= gross and fee * BPS <= gross * bps < (fee + 1) * BPS
    credit = Credit("wal_1", "wallet_wal_1", "xr_1", "shop.example", bps, "/p")
    ops = settlement_chain("x402dev_payer", gross, "x402:k", "d", {}, credit)
    assert ops[0].amount == gross and ops[0].credit_account_id == "wallet_wal_1"
    assert ops[0].usage is not None and ops[0].usage.meter == "x402_earnings"
    taken = sum(o.amount for o in ops[1:])
    assert all(o.debit_account_id == "wallet_wal_1" and o.credit_account_id == FEE_ACCOUNT for o in ops[1:])
    assert taken == fee and ops[0].amount - taken == gross - fee  # net + fee == gross
    assert all(o.description.startswith("x402 fee") for o in ops[1:])


class Harness:
    """A runtime on its own loop, for hypothesis (which runs examples synchronously)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.rt = Runtime.build(settings_for(url))
        self.wallet = self.run(self.rt.wallets.create(owner="ops"))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def balance(self, account: str) -> int:
        return (await self.rt.ledger.get_account(account)).balance

    async def example(self, gross: int, bps: int) -> None:
        rt, w = self.rt, self.wallet
        payer = Payer()
        await rt.devnet.fund(payer.address, gross)
        reqs = requirements(gross)
        before = (await self.balance(w.account_id), await self.balance(FEE_ACCOUNT))
        credit = Credit(w.id, w.account_id, "xr_h", "shop.example", bps, "/p")
        out = await rt.facilitator.settle(payer.v2(reqs), reqs, "http://shop.example/p", None, credit)
        assert out["success"], out
        fee = fee_of(gross, bps)
        assert await self.balance(w.account_id) - before[0] == gross - fee
        assert await self.balance(FEE_ACCOUNT) - before[1] == fee
        assert await rt.devnet.balance(payer.address) == 0
        assert sum(a.balance for a in await rt.ledger.accounts()) == 0

    def close(self) -> None:
        try:
            self.run(self.rt.close())
        finally:
            self.loop.close()


def test_settlements_move_gross_in_and_the_fee_out_exactly(db_url: str) -> None:
    h = Harness(db_url)
    try:

        @hypothesis.settings(
            max_examples=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @hypothesis.given(st.integers(1, 10**12), st.integers(0, BPS))
        def check(gross: int, bps: int) -> None:
            h.run(h.example(gross, bps))

        check()
    finally:
        h.close()


WORKERS = 4
WORKER = r"""
import asyncio, json, sys
from tollway.settings import Settings
from tollway.runtime import Runtime
from tollway.x402.earnings import Credit

cfg = json.loads(sys.argv[1])


async def main():
    rt = Runtime.build(Settings.model_validate({"database": {"url": cfg["url"]}}))
    try:
        await rt.ledger.get_account(cfg["credit"][1])  # connected and warm
        print("ready", flush=True)
        sys.stdin.readline()
        credit = Credit(*cfg["credit"])
        tries = [
            rt.facilitator.settle(cfg["payload"], cfg["reqs"], "http://shop.example/p", None, credit)
            for _ in range(5)
        ]
        outs = await asyncio.gather(*tries)
        print(json.dumps({"settled": sum(1 for o in outs if o["success"])}), flush=True)
    finally:
        await rt.close()

asyncio.run(main())
"""


async def _setup(url: str, gross: int) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    rt = Runtime.build(settings_for(url))
    try:
        w = await rt.wallets.create(owner="ops")
        payer = Payer()
        await rt.devnet.fund(payer.address, gross * 3)  # enough for three: only one may settle
        reqs = requirements(gross)
        return w, payer.v2(reqs), reqs, payer.address
    finally:
        await rt.close()


async def _final(url: str, account: str, payer: str) -> tuple[int, int, int, int]:
    rt = Runtime.build(settings_for(url))
    try:
        accounts = await rt.ledger.accounts()
        total = sum(a.balance for a in accounts)
        fees = (await rt.ledger.get_account(FEE_ACCOUNT)).balance
        return (await rt.ledger.get_account(account)).balance, fees, await rt.devnet.balance(payer), total
    finally:
        await rt.close()


@pytest.mark.slow
def test_one_authorization_settled_from_four_processes_at_once_credits_the_wallet_once(
    db_url: str, tmp_path: Path
) -> None:
    gross = 1_000_003
    w, payload, reqs, payer = asyncio.run(_setup(db_url, gross))
    credit = [w.id, w.account_id, "xr_p", "shop.example", 500, "/p"]
    cfg = {"url": db_url, "payload": payload, "reqs": reqs, "credit": credit}
    results = run_together(WORKER, [cfg] * WORKERS, tmp_path, timeout=240)
    settled = sum(r["settled"] for r in results)
    assert settled == 1
    wallet, fees, left, total = asyncio.run(_final(db_url, w.account_id, payer))
    fee = gross * 500 // 10_000
    assert (wallet, fees, left, total) == (gross - fee, fee, gross * 2, 0)


async def test_a_deployment_that_will_not_start_is_a_502_in_the_one_shape_never_a_500(rt: Runtime) -> None:
    async def broken(host: str) -> tuple[str, str] | None:
        raise RuntimeError("the sandbox is gone")

    async def nothing(host: str) -> tuple[str, str] | None:
        return None

    r = await send_raw(Front(rt.paywall, broken, 500), "GET", b"/x")
    assert r.status_code == 502 and r.json()["error"]["code"] == "deployment_unavailable"
    assert set(r.json()["error"]) == {"type", "code", "message", "param"}
    r = await send_raw(Front(rt.paywall, nothing, 500), "GET", b"/x")
    assert r.status_code == 404 and r.json()["error"]["code"] == "deployment_not_found"
