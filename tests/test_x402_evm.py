"""Settlement on a real EVM (py-evm in process, chain 31337): the facilitator
submits the payer's EIP-3009 authorization to the committed EIP3009Token,
the balances move on chain, and the ledger records the revenue once."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select

from evm_chain import ARTIFACT, SOURCE, EvmChain, start
from tollway.core.schema import ledger_transfers, usage_events
from tollway.runtime import Runtime
from tollway.x402.evm import INBOUND_ACCOUNT, EvmSettlement
from tollway.x402.exact_evm import Authorization
from tollway.x402.facilitator import Facilitator
from tollway.x402.wire import PaymentInvalid
from x402_helpers import NETWORK, PAY_TO, Payer, requirements

NONCE_USED = "invalid_exact_evm_nonce_already_used"


@pytest.fixture
def chain() -> Iterator[EvmChain]:
    yield start()


def settlement(rt: Runtime, chain: EvmChain, **kw: Any) -> EvmSettlement:
    return EvmSettlement(rt.ledger, chain.w3, NETWORK, chain.asset, chain.facilitator_key, **kw)


def facilitator(rt: Runtime, chain: EvmChain, s: EvmSettlement | None = None) -> Facilitator:
    cfg = rt.settings.x402.model_copy(update={"asset": chain.asset})
    return Facilitator(cfg, s or settlement(rt, chain), rt.clock)


def payment(chain: EvmChain, minted: int, amount: int = 1000) -> tuple[Payer, dict[str, Any], dict[str, Any]]:
    p = Payer()
    if minted:
        chain.mint(p.address, minted)
    reqs = requirements(amount, asset=chain.asset)
    return p, p.v2(reqs, asset=chain.asset), reqs


async def revenue(rt: Runtime) -> int:
    return (await rt.ledger.get_account("sys_revenue")).balance


async def x402_transfers(rt: Runtime) -> int:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(ledger_transfers.c.id).where(ledger_transfers.c.debit_account_id == INBOUND_ACCOUNT)
        )
        return len(rows.all())


async def test_a_payment_verifies_and_settles_on_chain(rt: Runtime, chain: EvmChain) -> None:
    f = facilitator(rt, chain)
    p, payload, reqs = payment(chain, 10_000)
    assert await f.verify(payload, reqs) == {"isValid": True, "payer": p.address}
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (10_000, 0)  # verify moves nothing
    r = await f.settle(payload, reqs, resource="http://t/paid")
    assert r["success"] is True and r["payer"] == p.address and r["network"] == NETWORK, r
    tx = r["transaction"]
    assert tx.startswith("0x") and len(tx) == 66
    receipt = chain.w3.eth.get_transaction_receipt(tx)
    assert receipt["status"] == 1 and receipt["from"] == chain.facilitator.address
    assert receipt["to"] == chain.asset
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (9_000, 1000)
    assert chain.used(p.address, payload["payload"]["authorization"]["nonce"])
    assert chain.w3.eth.get_balance(p.address) == 0  # the payer never needs gas
    assert await revenue(rt) == 1000
    assert (await rt.ledger.get_account(INBOUND_ACCOUNT)).kind == "funding"
    async with rt.engine.connect() as conn:
        [u] = (await conn.execute(select(usage_events).where(usage_events.c.meter == "x402"))).mappings()
        [t] = (
            await conn.execute(select(ledger_transfers).where(ledger_transfers.c.id == u["transfer_id"]))
        ).mappings()
    meta = json.loads(u["metadata"])
    assert u["amount"] == 1000 and meta["transaction"] == tx
    assert (meta["payer"], meta["pay_to"], meta["network"]) == (p.address, PAY_TO, NETWORK)
    assert (meta["asset"], meta["resource"]) == (chain.asset, "http://t/paid")
    assert (t["debit_account_id"], t["credit_account_id"], t["amount"]) == (
        INBOUND_ACCOUNT,
        "sys_revenue",
        1000,
    )
    assert tx in t["description"]
    nonce = payload["payload"]["authorization"]["nonce"]
    assert t["idempotency_key"] == f"x402:{NETWORK}:{chain.asset.lower()}:{p.address.lower()}:{nonce}"


async def test_a_replayed_authorization_is_nonce_used_and_recorded_once(rt: Runtime, chain: EvmChain) -> None:
    f = facilitator(rt, chain)
    p, payload, reqs = payment(chain, 10_000)
    assert (await f.settle(payload, reqs))["success"] is True
    again = await f.settle(payload, reqs)
    assert (again["success"], again["errorReason"], again["transaction"]) == (False, NONCE_USED, "")
    assert (await f.verify(payload, reqs))["invalidReason"] == NONCE_USED
    assert (chain.balance(p.address), await revenue(rt), await x402_transfers(rt)) == (9_000, 1000, 1)


async def test_the_tokens_own_revert_is_mapped_when_the_precheck_is_stale(
    rt: Runtime, chain: EvmChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain, not the pre-check, is the judge: a used nonce or short balance that
    the reads missed still comes back as the right reason, from the token's revert."""
    s = settlement(rt, chain)
    f = facilitator(rt, chain, s)
    p, payload, reqs = payment(chain, 1500)
    assert (await f.settle(payload, reqs))["success"] is True

    async def never_used(authorizer: str, nonce: str) -> bool:
        return False

    async def rich(address: str) -> int:
        return 10**12

    monkeypatch.setattr(s, "nonce_used", never_used)
    monkeypatch.setattr(s, "balance", rich)
    with pytest.raises(PaymentInvalid) as e:
        await s.transfer_with_authorization(Authorization.parse(payload["payload"]), PAY_TO, {})
    assert e.value.reason == NONCE_USED
    _, second, _ = payment(chain, 0)  # a payer with no tokens at all
    with pytest.raises(PaymentInvalid) as e:
        await s.transfer_with_authorization(Authorization.parse(second["payload"]), PAY_TO, {})
    assert e.value.reason == "insufficient_funds"
    assert (chain.balance(p.address), await revenue(rt), await x402_transfers(rt)) == (500, 1000, 1)


async def test_a_transfer_to_someone_else_is_not_recorded(rt: Runtime, chain: EvmChain) -> None:
    """Revenue is recorded only for the token's Transfer(payer, payTo, value) log."""
    s = settlement(rt, chain)
    p, payload, _ = payment(chain, 10_000)
    elsewhere = Account.create().address
    with pytest.raises(PaymentInvalid) as e:
        await s.transfer_with_authorization(Authorization.parse(payload["payload"]), elsewhere, {})
    assert e.value.reason == "transaction_failed" and "transfer event mismatch" in e.value.message
    # The authorization named PAY_TO, so that is where the token sent it; the caller said otherwise.
    assert (chain.balance(p.address), chain.balance(elsewhere), chain.balance(PAY_TO)) == (9_000, 0, 1000)
    assert (await revenue(rt), await x402_transfers(rt)) == (0, 0)


async def test_an_insufficient_balance_is_insufficient_funds(rt: Runtime, chain: EvmChain) -> None:
    f = facilitator(rt, chain)
    p, payload, reqs = payment(chain, 999)
    v = await f.verify(payload, reqs)
    assert (v["isValid"], v["invalidReason"]) == (False, "insufficient_funds")
    r = await f.settle(payload, reqs)
    assert (r["success"], r["errorReason"]) == (False, "insufficient_funds")
    assert (chain.balance(p.address), chain.balance(PAY_TO), await revenue(rt)) == (999, 0, 0)
    assert chain.w3.eth.get_transaction_count(chain.facilitator.address) == 0  # nothing was sent


async def test_a_receipt_that_does_not_come_is_settlement_pending(rt: Runtime, chain: EvmChain) -> None:
    s = settlement(rt, chain, receipt_timeout_s=0.3, poll_interval_s=0.05)
    f = facilitator(rt, chain, s)
    p, payload, reqs = payment(chain, 10_000)
    chain.manual_mining()  # the transaction is sent, never mined
    r = await f.settle(payload, reqs)
    assert (r["success"], r["errorReason"]) == (False, "settlement_pending")
    [tx] = [w for w in r["errorMessage"].split() if w.startswith("0x") and len(w) == 66]
    assert (chain.balance(p.address), await revenue(rt), await x402_transfers(rt)) == (10_000, 0, 0)
    chain.mine()  # the pending transaction was real: mined, it moves the money
    assert chain.w3.eth.get_transaction_receipt(tx)["status"] == 1
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (9_000, 1000)
    for _ in range(100):  # and the settlement, still followed, is booked once mined
        if await revenue(rt):
            break
        await asyncio.sleep(0.05)
    assert (await revenue(rt), await x402_transfers(rt)) == (1000, 1)


async def test_one_authorization_sent_many_times_at_once_settles_once(rt: Runtime, chain: EvmChain) -> None:
    f = facilitator(rt, chain)
    p, payload, reqs = payment(chain, 10_000)
    results = await asyncio.gather(*(f.settle(payload, reqs) for _ in range(5)))
    assert sum(r["success"] for r in results) == 1, results
    assert {r.get("errorReason") for r in results if not r["success"]} == {NONCE_USED}
    assert (chain.balance(p.address), await revenue(rt), await x402_transfers(rt)) == (9_000, 1000, 1)


async def test_concurrent_payments_share_the_facilitator_account(rt: Runtime, chain: EvmChain) -> None:
    """Account nonces are handed out under a lock: every transaction is mined."""
    f = facilitator(rt, chain)
    payments = [payment(chain, 1000) for _ in range(4)]
    results = await asyncio.gather(*(f.settle(payload, reqs) for _, payload, reqs in payments))
    assert all(r["success"] for r in results), results
    assert len({r["transaction"] for r in results}) == 4
    assert chain.w3.eth.get_transaction_count(chain.facilitator.address) == 4
    assert (chain.balance(PAY_TO), await revenue(rt), await x402_transfers(rt)) == (4000, 4000, 4)


async def test_an_rpc_on_another_chain_is_refused(rt: Runtime, chain: EvmChain) -> None:
    s = EvmSettlement(rt.ledger, chain.w3, "eip155:8453", chain.asset, chain.facilitator_key)
    with pytest.raises(RuntimeError, match="chain 31337"):
        await s.check_chain()


def test_the_committed_artifact_is_built_from_the_committed_source() -> None:
    art = json.loads(ARTIFACT.read_text())
    assert art["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert art["contractName"] == "EIP3009Token" and art["bytecode"].startswith("0x")


async def test_two_facilitators_race_an_authorization_and_it_settles_once(
    rt: Runtime, chain: EvmChain
) -> None:
    """As two processes would: both send, one block mines both, the second reverts on
    chain and is reported as the used nonce it is; the ledger records one payment."""
    other_key = Account.create()
    chain.fund_eth(other_key.address)
    a = settlement(rt, chain, poll_interval_s=0.02, receipt_timeout_s=5)
    b = EvmSettlement(
        rt.ledger, chain.w3, NETWORK, chain.asset, "0x" + bytes(other_key.key).hex(), poll_interval_s=0.02
    )
    p, payload, reqs = payment(chain, 10_000)
    chain.manual_mining()
    settles = [asyncio.create_task(facilitator(rt, chain, s).settle(payload, reqs)) for s in (a, b)]
    for _ in range(500):  # until both transactions are sent (eth-tester has no pending count)
        if a._next_nonce and b._next_nonce:
            break
        await asyncio.sleep(0.01)
    chain.mine()
    results = await asyncio.gather(*settles)
    assert sorted((r["success"], r.get("errorReason")) for r in results) == [
        (False, NONCE_USED),
        (True, None),
    ]
    [lost] = [r for r in results if not r["success"]]
    assert "reverted" in lost["errorMessage"]  # mined and reverted, not refused before sending
    assert [chain.w3.eth.get_transaction_count(s.facilitator_address) for s in (a, b)] == [1, 1]
    assert (chain.balance(p.address), await revenue(rt), await x402_transfers(rt)) == (9_000, 1000, 1)


def test_evm_backend_is_configuration(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend = "evm" needs rpc_url and the facilitator's key in the environment."""
    from conftest import settings_for
    from tollway.core.config import ConfigError
    from tollway.runtime import Runtime
    from tollway.x402.evm import EvmSettlement

    with pytest.raises(ValueError, match="rpc_url"):
        settings_for(db_url, x402={"backend": "evm"})
    s = settings_for(db_url, x402={"backend": "evm", "rpc_url": "http://127.0.0.1:8545"})
    monkeypatch.delenv("TOLLWAY_X402_FACILITATOR_KEY", raising=False)
    with pytest.raises(ConfigError, match="TOLLWAY_X402_FACILITATOR_KEY"):
        Runtime.build(s)
    monkeypatch.setenv("TOLLWAY_X402_FACILITATOR_KEY", "0x" + "11" * 32)
    rt = Runtime.build(s)
    assert isinstance(rt.facilitator.devnet, EvmSettlement)
    asyncio.run(rt.close())
