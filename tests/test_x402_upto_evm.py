"""The evm backend's upto path, on the in-process chain (py-evm, chain 31337)
with stand-ins for Permit2 and the x402 upto proxy at their canonical
addresses (``contracts/Permit2Stub.sol``, ``X402UptoProxyStub.sol``: Permit2's
SignatureTransfer and the proxy's settle, as their sources do them; not the
audited contracts). The call tollway sends is also checked byte for byte
against the official SDK's own encoding of it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ABI, X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.types import UptoPermit2Payload
from x402.mechanisms.evm.upto.permit2_utils import _build_upto_permit2_settle_args

from evm_chain import STUBS, EvmChain, start
from tollway.runtime import Runtime
from tollway.x402 import upto_evm
from tollway.x402.evm import EvmSettlement
from tollway.x402.facilitator import Facilitator
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid
from x402_helpers import NETWORK, PAY_TO, Payer, permit, upto_requirements, upto_v2


@pytest.fixture
def chain() -> Iterator[EvmChain]:
    yield start()


@pytest.fixture
def permit2_chain() -> Iterator[EvmChain]:
    yield start(permit2=True)


def settlement(rt: Runtime, chain: EvmChain) -> EvmSettlement:
    return EvmSettlement(rt.ledger, chain.w3, NETWORK, chain.asset, chain.facilitator_key)


def approve_permit2(chain: EvmChain, p: Payer) -> None:
    """The payer lets Permit2 move its tokens (the one transaction it ever sends)."""
    chain.fund_eth(p.address)
    approve = chain.token.functions.approve(Web3.to_checksum_address(upto_evm.PERMIT2_ADDRESS), 2**256 - 1)
    tx = approve.build_transaction(
        {"from": p.address, "nonce": chain.w3.eth.get_transaction_count(p.address), "chainId": 31337}
    )
    sent = chain.w3.eth.send_raw_transaction(p.account.sign_transaction(tx).raw_transaction)
    assert chain.w3.eth.wait_for_transaction_receipt(sent)["status"] == 1


async def test_an_upto_permit_settles_what_was_used_on_chain_once(
    rt: Runtime, permit2_chain: EvmChain
) -> None:
    chain = permit2_chain
    s = settlement(rt, chain)
    f = Facilitator(rt.settings.x402.model_copy(update={"asset": chain.asset}), s, rt.clock)
    p = Payer()
    chain.mint(p.address, 10_000)
    approve_permit2(chain, p)
    reqs = upto_requirements(5000, asset=chain.asset)
    reqs["extra"]["facilitatorAddress"] = s.facilitator_address
    payload = upto_v2(p, reqs, token=chain.asset, facilitator=s.facilitator_address)
    assert await f.verify(payload, reqs) == {"isValid": True, "payer": p.address}
    r = await f.settle(payload, {**reqs, "amount": "700"}, resource="http://t/ai")
    assert r["success"] is True and r["amount"] == "700", r
    receipt = chain.w3.eth.get_transaction_receipt(r["transaction"])
    assert receipt["status"] == 1 and receipt["to"] == upto_evm.UPTO_PROXY_ADDRESS
    assert receipt["from"] == chain.facilitator.address
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (9_300, 700)
    assert (await rt.ledger.get_account("sys_revenue")).balance == 700
    nonce = Permit.parse(payload["payload"]).nonce
    assert await s.nonce_used(p.address, nonce) is True  # Permit2's bitmap, on chain
    again = await f.settle(payload, {**reqs, "amount": "1"})
    assert (again["success"], again["errorReason"]) == (False, "invalid_exact_evm_nonce_already_used")
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (9_300, 700)


async def test_on_chain_the_proxy_refuses_what_tollway_refuses(rt: Runtime, permit2_chain: EvmChain) -> None:
    """Sent anyway (past tollway's own checks), the stand-ins refuse a permit
    another facilitator must settle, and a forged signature: nothing moves."""
    chain = permit2_chain
    s = settlement(rt, chain)
    p, other = Payer(), Payer()
    chain.mint(p.address, 10_000)
    approve_permit2(chain, p)
    for raw, reason in (
        (permit(p, 5000, token=chain.asset, facilitator=other.address), "upto_unauthorized_facilitator"),
        (
            permit(p, 5000, token=chain.asset, facilitator=s.facilitator_address, key=other.account.key),
            "invalid",
        ),
    ):
        with pytest.raises(PaymentInvalid) as e:
            await s.permit_witness_transfer(Permit.parse(raw), 100, PAY_TO, {})
        assert e.value.reason == "transaction_failed", (reason, e.value.message)
    assert (chain.balance(p.address), chain.balance(PAY_TO)) == (10_000, 0)


async def test_the_settle_call_is_the_sdks_byte_for_byte(rt: Runtime, chain: EvmChain) -> None:
    s = settlement(rt, chain)
    raw = permit(Payer(), 5000, token=chain.asset, facilitator=s.facilitator_address)
    ours = s._call_for(Permit.parse(raw), 1234)
    proxy = chain.w3.eth.contract(address=X402_UPTO_PERMIT2_PROXY_ADDRESS, abi=X402_UPTO_PERMIT2_PROXY_ABI)
    theirs = proxy.functions.settle(*_build_upto_permit2_settle_args(UptoPermit2Payload.from_dict(raw), 1234))
    assert ours.address == theirs.address == upto_evm.UPTO_PROXY_ADDRESS
    assert ours._encode_transaction_data() == theirs._encode_transaction_data()


async def test_a_permit2_nonce_is_its_bit_in_the_nonce_bitmap(rt: Runtime, chain: EvmChain) -> None:
    s = settlement(rt, chain)
    n = (7 << 8) | 42  # word 7, bit 42
    asked: list[tuple[str, int]] = []

    def bitmap(owner: str, word: int) -> Any:
        asked.append((owner, word))
        return SimpleNamespace(call=lambda *_: (1 << 42) if word == 7 else 0)

    s.permit2 = SimpleNamespace(functions=SimpleNamespace(nonceBitmap=bitmap))  # type: ignore[assignment]
    owner = Account.create().address
    assert await s.nonce_used(owner, f"permit2:{n}") is True
    assert await s.nonce_used(owner, f"permit2:{n + 1}") is False
    assert await s.nonce_used(owner, f"permit2:{42}") is False  # the same bit of another word
    assert asked == [(owner, 7), (owner, 7), (owner, 0)]


async def test_a_permit_is_covered_only_once_permit2_may_spend_the_balance(
    rt: Runtime, chain: EvmChain
) -> None:
    s = settlement(rt, chain)
    p = Payer()
    chain.mint(p.address, 10_000)
    up = Permit.parse(permit(p, 5000, token=chain.asset, facilitator=s.facilitator_address))
    assert await s.covers(up) is False  # no allowance for Permit2 yet
    approve_permit2(chain, p)
    assert await s.covers(up) is True
    too_much = Permit.parse(permit(p, 20_000, token=chain.asset, facilitator=s.facilitator_address))
    assert await s.covers(too_much) is False  # the balance


def test_the_stand_ins_artifacts_are_built_from_their_sources() -> None:
    for path in STUBS.values():
        art = json.loads(path.read_text())
        source = path.with_suffix(".sol").read_text()
        assert art["sourceSha256"] == hashlib.sha256(source.encode()).hexdigest(), path.name
