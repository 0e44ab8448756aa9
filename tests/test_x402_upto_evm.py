"""The evm backend's upto path. The in-process test chain has no Permit2 or
x402 upto proxy deployed, so the settlement itself is not run on chain here:
the contract call tollway sends is checked byte for byte against the official
SDK's own encoding of it, Permit2's nonce bitmap is read bit by bit, and the
allowance check runs on the chain's token."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ABI, X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.mechanisms.evm.types import UptoPermit2Payload
from x402.mechanisms.evm.upto.permit2_utils import _build_upto_permit2_settle_args

from evm_chain import EvmChain, start
from tollway.runtime import Runtime
from tollway.x402 import upto_evm
from tollway.x402.evm import EvmSettlement
from tollway.x402.upto_evm import Permit
from x402_helpers import NETWORK, Payer, permit


@pytest.fixture
def chain() -> Iterator[EvmChain]:
    yield start()


def settlement(rt: Runtime, chain: EvmChain) -> EvmSettlement:
    return EvmSettlement(rt.ledger, chain.w3, NETWORK, chain.asset, chain.facilitator_key)


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
    chain.fund_eth(p.address)
    approve = chain.token.functions.approve(Web3.to_checksum_address(upto_evm.PERMIT2_ADDRESS), 2**256 - 1)
    tx = approve.build_transaction(
        {"from": p.address, "nonce": chain.w3.eth.get_transaction_count(p.address), "chainId": 31337}
    )
    signed = p.account.sign_transaction(tx)
    assert (
        chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_raw_transaction(signed.raw_transaction))[
            "status"
        ]
        == 1
    )
    assert await s.covers(up) is True
    too_much = Permit.parse(permit(p, 20_000, token=chain.asset, facilitator=s.facilitator_address))
    assert await s.covers(too_much) is False  # the balance
