"""The upto scheme (``tollway.x402.upto_evm`` and the built-in facilitator): a
Permit2 authorization for a maximum, checked as the official SDK checks it,
of which the facilitator settles what the resource server names, at most the
maximum, once per permit (also under concurrent settlements, across
runtimes sharing the database)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import select
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.mechanisms.evm.upto.client import _create_upto_permit2_payload
from x402.schemas import PaymentRequirements

from test_x402_facilitator import balances, funded
from tollway.core.schema import usage_events
from tollway.runtime import Runtime
from tollway.settings import Settings
from tollway.x402 import upto_evm
from tollway.x402.devnet import FACILITATOR_ADDRESS
from tollway.x402.payments import payments
from tollway.x402.upto_evm import Permit
from tollway.x402.wire import PaymentInvalid
from x402_helpers import PAY_TO, Payer, permit, upto_requirements, upto_v2

NONCE_USED = "invalid_exact_evm_nonce_already_used"


# ------------------------------------------------------------------ upto_evm


def test_the_official_clients_permit_parses_and_recovers_to_its_signer() -> None:
    """What the SDK's upto client signs is what tollway hashes: the same digest
    as eth-account's EIP-712 encoding, recovering to the payer."""
    a = Account.create()
    reqs = PaymentRequirements.model_validate(upto_requirements(5000))
    payload = _create_upto_permit2_payload(EthAccountSigner(a), reqs)
    p = Permit.parse(payload)
    assert (p.payer, p.value, p.facilitator, p.to) == (a.address, 5000, FACILITATOR_ADDRESS, PAY_TO)
    assert p.spender == upto_evm.UPTO_PROXY_ADDRESS and p.nonce.startswith("permit2:")
    assert upto_evm.signer(p, 31337) == a.address
    typed = encode_typed_data(
        domain_data=upto_evm.domain(31337), message_types=upto_evm.TYPES, message_data=p.message()
    )
    assert upto_evm.digest(p, 31337) == _eip191(typed)
    assert upto_evm.signer(p, 1) != a.address  # another chain's domain: another signer


def _eip191(msg: Any) -> bytes:
    from eth_utils.crypto import keccak

    return bytes(keccak(b"\x19" + msg.version + msg.header + msg.body))


def _check(p: Permit, **over: Any) -> None:
    kw: dict[str, Any] = {
        "pay_to": PAY_TO,
        "asset": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "facilitators": (FACILITATOR_ADDRESS,),
        "amount": 1000,
        "now_s": int(time.time()),
    }
    upto_evm.check(p, **{**kw, **over})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"spender": "0x" + "11" * 20}, "invalid_permit2_spender"),
        ({"to": "0x" + "22" * 20}, "invalid_permit2_recipient_mismatch"),
        ({"facilitator": "0x" + "33" * 20}, "upto_facilitator_mismatch"),
        ({"deadline": 1}, "permit2_deadline_expired"),
        ({"valid_after": 2**40}, "permit2_not_yet_valid"),
        ({"value": 999}, "permit2_amount_mismatch"),
        ({"token": "0x" + "44" * 20}, "permit2_token_mismatch"),
    ],
)
def test_each_field_check_names_its_reason(change: dict[str, Any], reason: str) -> None:
    payer = Payer()
    p = Permit.parse(permit(payer, **change))
    with pytest.raises(PaymentInvalid) as e:
        _check(p)
    assert e.value.reason == reason and e.value.payer == payer.address


def test_a_signature_by_another_key_or_not_canonical_is_refused() -> None:
    payer, other = Payer(), Payer()
    forged = Permit.parse(permit(payer, key=other.account.key))
    assert upto_evm.signer(forged, 31337) != payer.address
    good = permit(payer)
    raw = bytes.fromhex(good["signature"][2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")  # the same signature, malleated
    for sig in (
        "0x" + (raw[:32] + high_s + bytes([55 - raw[64]])).hex(),
        "0x" + (raw[:64] + b"\x00").hex(),
    ):
        with pytest.raises(PaymentInvalid) as e:
            upto_evm.signer(Permit.parse({**good, "signature": sig}), 31337)
        assert e.value.reason == "invalid_permit2_signature"
    for bad in ({**good, "signature": "0x1234"}, {"permit2Authorization": "x"}, "nope"):
        with pytest.raises(PaymentInvalid):
            Permit.parse(bad)


def test_a_settlement_over_the_maximum_is_refused() -> None:
    p = Permit.parse(permit(Payer(), 1000))
    assert upto_evm.settle_amount(p, 1000) == 1000 and upto_evm.settle_amount(p, 0) == 0
    with pytest.raises(PaymentInvalid) as e:
        upto_evm.settle_amount(p, 1001)
    assert e.value.reason == "invalid_upto_evm_payload_settlement_exceeds_amount"


# --------------------------------------------------------------- facilitator


def test_supported_lists_upto_with_the_facilitator_address(rt: Runtime) -> None:
    s = rt.facilitator.supported()
    assert {
        "x402Version": 2,
        "scheme": "upto",
        "network": "eip155:31337",
        "extra": {"facilitatorAddress": FACILITATOR_ADDRESS},
    } in s["kinds"]
    assert s["signers"] == {"eip155:*": [FACILITATOR_ADDRESS]}


async def test_verify_for_the_maximum_then_settle_what_was_used_once(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = upto_requirements(1000)
    payload = upto_v2(p, reqs)
    assert await rt.facilitator.verify(payload, reqs) == {"isValid": True, "payer": p.address}
    assert await balances(rt, p) == (10_000, 0)  # verify moves nothing
    # The resource server settles the actual amount: the requirements' amount (its override).
    r = await rt.facilitator.settle(payload, {**reqs, "amount": "420"})
    assert r["success"] is True and r["amount"] == "420" and r["payer"] == p.address, r
    assert await balances(rt, p) == (10_000 - 420, 420)
    async with rt.engine.connect() as conn:
        [u] = (await conn.execute(select(usage_events).where(usage_events.c.meter == "x402"))).mappings()
    meta = json.loads(u["metadata"])
    assert u["amount"] == 420 and meta["scheme"] == "upto" and meta["max_amount"] == 1000
    assert meta["transaction"] == r["transaction"] and meta["pay_to"] == PAY_TO
    [row] = await payments(rt.engine)
    assert (row["scheme"], row["amount"], row["max_amount"]) == ("upto", 420, 1000)
    again = await rt.facilitator.settle(payload, {**reqs, "amount": "1"})
    assert (again["success"], again["errorReason"]) == (False, NONCE_USED)
    v = await rt.facilitator.verify(payload, reqs)
    assert (v["isValid"], v["invalidReason"]) == (False, NONCE_USED)
    assert await balances(rt, p) == (10_000 - 420, 420)


async def test_settling_more_than_the_maximum_or_nothing(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = upto_requirements(1000)
    payload = upto_v2(p, reqs)
    over = await rt.facilitator.settle(payload, {**reqs, "amount": "1001"})
    assert (over["success"], over["errorReason"]) == (
        False,
        "invalid_upto_evm_payload_settlement_exceeds_amount",
    )
    zero = await rt.facilitator.settle(payload, {**reqs, "amount": "0"})
    assert (zero["success"], zero["amount"], zero["transaction"]) == (True, "0", "")
    assert await balances(rt, p) == (10_000, 0)


def _bad_cases(p: Payer) -> dict[str, tuple[Any, Any]]:
    reqs = upto_requirements(1000)
    now = int(time.time())
    other = Payer()
    return {
        "invalid_permit2_spender": (upto_v2(p, reqs, spender="0x" + "11" * 20), reqs),
        "invalid_permit2_recipient_mismatch": (upto_v2(p, reqs, to="0x" + "22" * 20), reqs),
        "upto_facilitator_mismatch": (upto_v2(p, reqs, facilitator="0x" + "33" * 20), reqs),
        "permit2_deadline_expired": (upto_v2(p, reqs, deadline=now + 3), reqs),
        "permit2_not_yet_valid": (upto_v2(p, reqs, valid_after=now + 600), reqs),
        "permit2_amount_mismatch": (upto_v2(p, reqs, value=2000), reqs),
        "permit2_token_mismatch": (upto_v2(p, reqs, token="0x" + "44" * 20), reqs),
        "invalid_permit2_signature": (upto_v2(p, reqs, key=other.account.key), reqs),
        "insufficient_funds": (upto_v2(other, reqs), reqs),
        "unsupported_scheme": ({**upto_v2(p, reqs), "x402Version": 1}, reqs),
    }


@pytest.mark.parametrize("reason", list(_bad_cases(Payer())))
async def test_every_bad_permit_gets_its_reason_and_moves_nothing(rt: Runtime, reason: str) -> None:
    p = await funded(rt)
    payload, reqs = _bad_cases(p)[reason]
    v = await rt.facilitator.verify(payload, reqs)
    assert (v["isValid"], v["invalidReason"]) == (False, reason)
    # At /settle the requirements' amount is what to settle, the permitted amount the
    # maximum (as the SDK's facilitator): more than the permit is the refusal there.
    amount = "2001" if reason == "permit2_amount_mismatch" else "10"
    s = await rt.facilitator.settle(payload, {**reqs, "amount": amount})
    if reason == "permit2_amount_mismatch":
        reason = "invalid_upto_evm_payload_settlement_exceeds_amount"
    assert (s["success"], s["errorReason"], s["transaction"]) == (False, reason, "")
    assert await balances(rt, p) == (10_000, 0)


async def test_a_permit_valid_for_too_long_is_refused(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = upto_requirements(1000)
    v = await rt.facilitator.verify(upto_v2(p, reqs, deadline=int(time.time()) + 86_400 * 365), reqs)
    assert (v["isValid"], v["invalidReason"]) == (False, "permit2_deadline_expired")


async def test_an_exact_payment_cannot_pass_as_upto_nor_upto_as_exact(rt: Runtime) -> None:
    from x402_helpers import requirements

    p = await funded(rt)
    exact = requirements(1000)
    up = upto_requirements(1000)
    v = await rt.facilitator.verify({**p.v2(exact), "accepted": up}, up)  # an EIP-3009 payload under upto
    assert v["isValid"] is False and v["invalidReason"] == "invalid_payload"
    v = await rt.facilitator.verify({**upto_v2(p, up), "accepted": exact}, exact)
    assert v["isValid"] is False and v["invalidReason"] == "invalid_payload"
    assert await balances(rt, p) == (10_000, 0)


async def test_the_same_permit_settled_concurrently_by_two_runtimes_moves_once(
    rt: Runtime, settings: Settings
) -> None:
    """Two processes' worth of facilitators (each its own engine and ledger
    writer) settle one permit at once, several times each: the ledger's
    idempotency key on the permit's nonce lets exactly one through."""
    other = Runtime.build(settings)
    try:
        p = await funded(rt)
        reqs = upto_requirements(1000)
        payload = upto_v2(p, reqs)
        tries = [
            f.settle(payload, {**reqs, "amount": str(100 + i)})
            for i in range(4)
            for f in (rt.facilitator, other.facilitator)
        ]
        results = await asyncio.gather(*tries)
        wins = [r for r in results if r["success"]]
        assert len(wins) == 1, results
        assert {r["errorReason"] for r in results if not r["success"]} == {NONCE_USED}
        moved = int(wins[0]["amount"])
        assert await balances(rt, p) == (10_000 - moved, moved)
    finally:
        await other.close()


async def test_a_permit_replayed_with_its_numbers_written_otherwise_is_the_same_permit(rt: Runtime) -> None:
    """The settlement is keyed by the nonce's value, not its spelling: "007" and
    "7" sign the same message, and settle once between them."""
    p = await funded(rt)
    reqs = upto_requirements(1000)
    payload = upto_v2(p, reqs, nonce=7)
    first = await rt.facilitator.settle(payload, {**reqs, "amount": "100"})
    assert first["success"] is True
    auth = payload["payload"]["permit2Authorization"]
    padded = {**payload, "payload": {**payload["payload"], "permit2Authorization": {**auth, "nonce": "007"}}}
    again = await rt.facilitator.settle(padded, {**reqs, "amount": "100"})
    assert (again["success"], again["errorReason"]) == (False, NONCE_USED)
    assert await balances(rt, p) == (10_000 - 100, 100)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", "0x10"),
        ("nonce", "-1"),
        ("deadline", "1e12"),
        ("nonce", 1.5),
        ("deadline", True),
        ("nonce", "١٢"),
    ],
)
def test_numbers_in_other_encodings_are_refused(field: str, value: Any) -> None:
    raw = permit(Payer())
    raw["permit2Authorization"][field] = value
    with pytest.raises(PaymentInvalid) as e:
        Permit.parse(raw)
    assert e.value.reason == "invalid_permit2_payload_format"
    with pytest.raises(PaymentInvalid):
        Permit.parse(
            {**raw, "permit2Authorization": {**raw["permit2Authorization"], "permitted": {"token": "x"}}}
        )
