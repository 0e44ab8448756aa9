"""The built-in facilitator: every check with its reason code, settlement on
devnet exactly once (also under concurrency and across runtimes), and the
HTTP API in the official facilitator shape."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tollway.core.schema import usage_events
from tollway.runtime import Runtime
from x402_helpers import PAY_TO, Payer, requirements


async def funded(rt: Runtime, amount: int = 10_000) -> Payer:
    p = Payer()
    await rt.devnet.fund(p.address, amount)
    return p


async def balances(rt: Runtime, p: Payer) -> tuple[int, int]:
    return await rt.devnet.balance(p.address), (await rt.ledger.get_account("sys_revenue")).balance


async def test_verify_then_settle_moves_the_money_once(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = requirements(1000)
    payload = p.v2(reqs)
    assert await rt.facilitator.verify(payload, reqs) == {"isValid": True, "payer": p.address}
    assert await balances(rt, p) == (10_000, 0)  # verify moves nothing
    r = await rt.facilitator.settle(payload, reqs)
    assert r["success"] is True and r["payer"] == p.address and r["network"] == "eip155:31337"
    assert r["transaction"].startswith("0x") and len(r["transaction"]) == 66
    assert await balances(rt, p) == (9_000, 1000)
    again = await rt.facilitator.settle(payload, reqs)
    assert (again["success"], again["errorReason"], again["transaction"]) == (
        False,
        "invalid_exact_evm_nonce_already_used",
        "",
    )
    v = await rt.facilitator.verify(payload, reqs)
    assert v["invalidReason"] == "invalid_exact_evm_nonce_already_used"
    assert await balances(rt, p) == (9_000, 1000)
    async with rt.engine.connect() as conn:
        [u] = (await conn.execute(select(usage_events).where(usage_events.c.meter == "x402"))).mappings()
    assert u["amount"] == 1000 and r["transaction"] in u["metadata"] and PAY_TO in u["metadata"]


def _bad_cases(p: Payer) -> dict[str, tuple[Any, Any]]:
    reqs = requirements(1000)
    other_scheme, base = requirements(scheme="deferred"), requirements(network="eip155:8453")
    now = int(time.time())
    other = Payer()
    return {
        "invalid_payload": ("not an object", reqs),
        "invalid_x402_version": ({**p.v2(reqs), "x402Version": 3}, reqs),
        "unsupported_scheme": (p.v2(other_scheme), other_scheme),
        "invalid_network": (p.v2(base), base),
        "invalid_payment_requirements": (p.v2(reqs), requirements(asset="0x" + "11" * 20)),
        "invalid_exact_evm_payload_recipient_mismatch": (p.v2(reqs, to="0x" + "22" * 20), reqs),
        "invalid_exact_evm_payload_authorization_value": (p.v2(reqs, value=999), reqs),
        "invalid_exact_evm_payload_authorization_valid_before": (p.v2(reqs, valid_before=now + 3), reqs),
        "invalid_exact_evm_payload_authorization_valid_after": (p.v2(reqs, valid_after=now + 60), reqs),
        "invalid_exact_evm_payload_signature": (p.v2(reqs, key=other.account.key), reqs),
        "insufficient_funds": (other.v2(reqs), reqs),
    }


@pytest.mark.parametrize("reason", list(_bad_cases(Payer())))
async def test_every_bad_payment_gets_its_reason_and_moves_nothing(rt: Runtime, reason: str) -> None:
    p = await funded(rt)
    payload, reqs = _bad_cases(p)[reason]
    v = await rt.facilitator.verify(payload, reqs)
    assert (v["isValid"], v["invalidReason"]) == (False, reason)
    s = await rt.facilitator.settle(payload, reqs)
    assert (s["success"], s["errorReason"], s["transaction"]) == (False, reason, "")
    assert await balances(rt, p) == (10_000, 0)


async def test_an_authorization_valid_for_too_long_is_refused(rt: Runtime) -> None:
    """A signature valid for centuries is a standing claim on the payer: the
    facilitator takes none valid beyond [x402] max_validity_seconds (3600 s)."""
    p = await funded(rt)
    reqs, now = requirements(1000), int(time.time())
    for far in (now + 10**10, now + 3600 + 60):
        payload = p.v2(reqs, valid_before=far)
        v = await rt.facilitator.verify(payload, reqs)
        assert v["invalidReason"] == "invalid_exact_evm_payload_authorization_valid_before", v
        s = await rt.facilitator.settle(payload, reqs)
        assert s["success"] is False
    assert await balances(rt, p) == (10_000, 0)
    ok = await rt.facilitator.verify(p.v2(reqs, valid_before=now + 3500), reqs)
    assert ok["isValid"] is True


async def test_wrong_chain_in_the_signature_is_a_bad_signature(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = requirements()
    v = await rt.facilitator.verify(p.v2(reqs, chain=1), reqs)
    assert v["invalidReason"] == "invalid_exact_evm_payload_signature"


async def test_one_authorization_sent_many_times_at_once_settles_once(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = requirements(1000)
    payload = p.v2(reqs)
    results = await asyncio.gather(*(rt.facilitator.settle(payload, reqs) for _ in range(20)))
    assert sum(r["success"] for r in results) == 1
    assert {r.get("errorReason") for r in results if not r["success"]} == {
        "invalid_exact_evm_nonce_already_used"
    }
    assert await balances(rt, p) == (9_000, 1000)


async def test_two_runtimes_on_one_database_settle_an_authorization_once(rt: Runtime) -> None:
    """Two writers (as two processes would be) race the same authorization."""
    other = Runtime.build(rt.settings)
    try:
        p = await funded(rt)
        reqs = requirements(1000)
        payload = p.v2(reqs)
        results = await asyncio.gather(
            *(r.facilitator.settle(payload, reqs) for r in (rt, other) for _ in range(5))
        )
        assert sum(r["success"] for r in results) == 1
        assert await balances(rt, p) == (9_000, 1000)
    finally:
        await other.close()


async def test_v1_payload_with_max_amount_required(rt: Runtime) -> None:
    p = await funded(rt)
    reqs = {
        "scheme": "exact",
        "network": "eip155:31337",
        "maxAmountRequired": "500",
        "resource": "http://t/x",
        "description": "",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "asset": requirements()["asset"],
        "extra": {"name": "USD Coin", "version": "2"},
    }
    r = await rt.facilitator.settle(p.v1(reqs), reqs)
    assert r["success"] is True
    assert await balances(rt, p) == (9_500, 500)


async def test_http_api_answers_in_the_official_shape(client: httpx.AsyncClient, rt: Runtime) -> None:
    sup = (await client.get("/x402/supported")).json()
    assert {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"} in sup["kinds"]
    p = await funded(rt)
    reqs = requirements(1000)
    body = {"x402Version": 2, "paymentPayload": p.v2(reqs), "paymentRequirements": reqs}
    bad = {**body, "paymentRequirements": requirements(2000)}
    r = await client.post("/x402/verify", json=bad)
    assert (
        r.status_code == 200 and r.json()["invalidReason"] == "invalid_exact_evm_payload_authorization_value"
    )
    r = await client.post("/x402/verify", json=body)
    assert r.status_code == 200 and r.json() == {"isValid": True, "payer": p.address}
    r = await client.post("/x402/settle", json=body)
    assert r.status_code == 200 and r.json()["success"] is True
    r = await client.post("/x402/settle", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@settings(max_examples=50, deadline=None)
@given(
    value=st.integers(min_value=0, max_value=2**256 - 1),
    after=st.integers(min_value=0, max_value=2**64),
    before=st.integers(min_value=0, max_value=2**64),
    chain=st.integers(min_value=1, max_value=2**63),
    name=st.text(max_size=20),
)
def test_direct_eip712_digest_matches_eth_account(
    value: int, after: int, before: int, chain: int, name: str
) -> None:
    """The hand-computed digest (on every paid request) equals eth-account's."""
    from eth_account.messages import _hash_eip191_message, encode_typed_data

    from tollway.x402 import exact_evm

    auth = exact_evm.Authorization(
        Payer().address, PAY_TO, value, after, before, "0x" + "ab" * 32, "0x" + "00" * 65
    )
    dom = exact_evm.domain(name, "2", chain, requirements()["asset"])
    msg = encode_typed_data(
        domain_data=dom,
        message_types={"TransferWithAuthorization": exact_evm.TRANSFER_WITH_AUTHORIZATION},
        message_data=auth.message(),
    )
    assert exact_evm.digest(auth, dom) == _hash_eip191_message(msg)


async def test_high_s_signatures_are_refused(rt: Runtime) -> None:
    """A malleated signature (s in the upper half) recovers the same key but is
    not canonical: EIP-3009 tokens refuse it, so does tollway."""
    p = await funded(rt)
    reqs = requirements()
    payload = p.v2(reqs)
    sig = bytes.fromhex(payload["payload"]["signature"][2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s_ = n - int.from_bytes(sig[32:64], "big")
    v = 55 - sig[64]  # 27 <-> 28
    payload["payload"]["signature"] = "0x" + (sig[:32] + s_.to_bytes(32, "big") + bytes([v])).hex()
    v_ = await rt.facilitator.verify(payload, reqs)
    assert v_["invalidReason"] == "invalid_exact_evm_payload_signature"
