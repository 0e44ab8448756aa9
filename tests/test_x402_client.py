"""tollway's x402 client (the paying side, for the wallet broker): it reads
tollway's own 402 (v2 header and v1 body) and the official SDK's, pays them on
devnet over real HTTP, builds the same payloads as the official SDK client,
signs what tollway's facilitator verifies, and refuses malformed 402s and
offers it cannot pay with clear errors."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.mechanisms.evm.exact import register_exact_evm_client

from conftest import settings_for
from test_x402_interop import SPEND, official_server, on_devnet
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.core.errors import TollwayError
from tollway.runtime import Runtime
from tollway.settings import Settings
from tollway.x402 import client
from tollway.x402.client import Offer
from tollway.x402.config import DEVNET_ASSET
from x402_helpers import EXTRA, NETWORK, PAY_TO, requirements

RULE = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}


def devnet_asset(o: Offer) -> bool:
    return o.asset.lower() == DEVNET_ASSET.lower() and o.chain_id in (31337, 84532)


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


async def pay_and_fetch(
    url: str, payer: LocalAccount, *, drop_v2_header: bool = False
) -> tuple[client.Offer, client.Payment, httpx.Response]:
    """What the broker does: fetch, read the 402, pick, sign, refetch."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(url)
        headers = {k: v for k, v in r.headers.items() if not (drop_v2_header and k == "payment-required")}
        req = client.required(r.status_code, headers, r.content)
        assert req is not None, r.text
        offer = client.pick(req.offers, allowed=devnet_asset)
        payment = client.sign(offer, payer, int(time.time()))
        paid = await http.get(url, headers={payment.header: payment.value})
    return offer, payment, paid


@pytest.fixture
def tollway_gateway(db_url: str) -> Iterator[tuple[str, Settings]]:
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [RULE]})
    with ThreadServer(create_app(settings)) as tw:
        yield tw.url, settings


async def balances(rt: Runtime, address: str) -> tuple[int, int]:
    return await rt.devnet.balance(address), (await rt.ledger.get_account("sys_revenue")).balance


def test_pays_tollways_own_gateway_with_v2(tollway_gateway: tuple[str, Settings]) -> None:
    url, settings = tollway_gateway
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))

    offer, payment, r = asyncio.run(pay_and_fetch(url + "/demo/weather?city=Oslo", payer))
    assert (offer.version, offer.network, offer.amount, offer.pay_to) == (2, NETWORK, 1000, PAY_TO)
    assert offer.resource == url + "/demo/weather?city=Oslo" and offer.extra == EXTRA
    assert payment.header == "PAYMENT-SIGNATURE"
    assert r.status_code == 200, r.text
    assert r.json()["city"] == "Oslo"
    got = client.receipt(r.headers)
    assert got is not None and got["success"] is True
    assert (got["payer"], got["network"]) == (payer.address, NETWORK)
    assert on_devnet(settings, lambda rt: balances(rt, payer.address)) == (4_000, 1_000)


@pytest.mark.parametrize("network", ["eip155:84532", "eip155:31337"], ids=["legacy-name", "caip2"])
def test_pays_tollways_own_gateway_with_v1(db_url: str, network: str) -> None:
    """The 402's v1 body (the v2 header hidden): paid with X-PAYMENT. On Base
    Sepolia's chain id v1 names the chain ``base-sepolia``; on 31337 (no v1 name)
    tollway writes the CAIP-2 id, which this client pays too."""
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [RULE], "network": network})
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))
    with ThreadServer(create_app(settings)) as tw:
        offer, payment, r = asyncio.run(pay_and_fetch(tw.url + "/demo/weather", payer, drop_v2_header=True))
    assert offer.version == 1 and payment.header == "X-PAYMENT"
    assert offer.network == ("base-sepolia" if network == "eip155:84532" else network)
    assert offer.resource == tw.url + "/demo/weather"
    assert r.status_code == 200, r.text
    assert "x-payment-response" in r.headers and "payment-response" not in r.headers
    got = client.receipt(r.headers)
    assert got is not None and got["success"] is True and got["payer"] == payer.address
    assert on_devnet(settings, lambda rt: rt.devnet.balance(payer.address)) == 4_000


@pytest.fixture
def sdk_server(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """A server protected by the official SDK's ASGI middleware, settling through
    tollway's facilitator."""
    with ThreadServer(create_app(settings)) as tw, ThreadServer(official_server(tw.url + "/x402")) as srv:
        yield srv.url, settings


def test_pays_a_server_behind_the_official_sdk_middleware(sdk_server: tuple[str, Settings]) -> None:
    url, settings = sdk_server
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))

    offer, _, r = asyncio.run(pay_and_fetch(url + "/weather", payer))
    assert offer.version == 2 and offer.amount == 1000 and offer.description == "Weather report"
    assert r.status_code == 200, r.text
    assert r.json() == {"weather": "sunny", "temperature": 70}
    got = client.receipt(r.headers)
    assert got is not None and got["success"] is True and got["payer"] == payer.address

    # An origin failure: the SDK settles nothing, and there is no receipt to capture on.
    _, _, broken = asyncio.run(pay_and_fetch(url + "/broken", payer))
    assert broken.status_code == 500 and client.receipt(broken.headers) is None
    assert on_devnet(settings, lambda rt: rt.devnet.balance(payer.address)) == 4_000


def test_a_payment_refused_after_signing_shows_the_reason(sdk_server: tuple[str, Settings]) -> None:
    """An unfunded payer: the paid retry is a 402 again, naming the reason."""
    url, _ = sdk_server
    _, _, r = asyncio.run(pay_and_fetch(url + "/weather", Account.create()))
    assert r.status_code == 402
    again = client.required(r.status_code, r.headers, r.content)
    assert again is not None and again.error == "insufficient_funds"


# ------------------------------------------------- the payload, exactly


def offer_v2(reqs: dict[str, Any] | None = None, **required: Any) -> Offer:
    body = {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": "http://paid.test/r", "description": "R", "mimeType": "application/json"},
        "accepts": [reqs or requirements()],
        **required,
    }
    req = client.required(402, {"PAYMENT-REQUIRED": b64(body)}, b"{}")
    assert req is not None
    return req.offers[0]


def offer_v1(network: str = "base-sepolia", **over: Any) -> Offer:
    v1 = {
        "scheme": "exact",
        "network": network,
        "maxAmountRequired": "1000",
        "resource": "http://paid.test/r",
        "description": "R",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "asset": DEVNET_ASSET,
        "extra": dict(EXTRA),
        **over,
    }
    [o] = client.offers(402, {}, json.dumps({"x402Version": 1, "error": "pay", "accepts": [v1]}).encode())
    return o


def shape(obj: Any) -> Any:
    """The structure of a JSON value: keys, nesting and value types."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    return type(obj).__name__


async def sdk_payload(account: LocalAccount, header: str, body: bytes) -> dict[str, Any]:
    """What the official SDK client puts in its payment header for this 402."""
    sdk = x402Client()
    register_exact_evm_client(sdk, account)
    sdk.set_spend_controls(
        {"allowed_assets": [*SPEND["allowed_assets"], {"network": "base-sepolia", "asset": DEVNET_ASSET}]}
    )
    http = x402HTTPClient(sdk)
    pr = http.get_payment_required_response(lambda n: header if n == "PAYMENT-REQUIRED" else None, body)
    payload = await sdk.create_payment_payload(pr)
    [(_, value)] = http.encode_payment_signature_header(payload).items()
    out: dict[str, Any] = json.loads(base64.b64decode(value))
    return out


async def test_the_payloads_are_the_official_sdks() -> None:
    account = Account.create()
    required_v2 = {
        "x402Version": 2,
        "error": "Payment required",
        "resource": {"url": "http://paid.test/r", "description": "R", "mimeType": "application/json"},
        "accepts": [requirements()],
        "extensions": {"bazaar": {"info": {"x": 1}}},
    }
    header = b64(required_v2)
    ours = client.sign(client.offers(402, {"payment-required": header}, b"")[0], account, int(time.time()))
    theirs = await sdk_payload(account, header, b"")
    assert shape(ours.payload) == shape(theirs)
    for k in ("x402Version", "accepted", "resource", "extensions"):
        assert ours.payload[k] == theirs[k], k
    mine, sdks = ours.payload["payload"]["authorization"], theirs["payload"]["authorization"]
    assert {k: mine[k] for k in ("from", "to", "value")} == {k: sdks[k] for k in ("from", "to", "value")}
    assert json.loads(base64.b64decode(ours.value)) == ours.payload

    v1_body = json.dumps(
        {
            "x402Version": 1,
            "error": "pay",
            "accepts": [{**offer_v1().raw}],
        }
    ).encode()
    ours1 = client.sign(client.offers(402, {}, v1_body)[0], account, int(time.time()))
    theirs1 = await sdk_payload(account, "", v1_body)
    assert ours1.header == "X-PAYMENT" and shape(ours1.payload) == shape(theirs1)
    assert {k: ours1.payload[k] for k in ("x402Version", "scheme", "network")} == {
        k: theirs1[k] for k in ("x402Version", "scheme", "network")
    }
    # The v1 window is the SDK's to the second: ten minutes back, maxTimeoutSeconds ahead.
    a, b = ours1.payload["payload"]["authorization"], theirs1["payload"]["authorization"]
    assert abs(int(a["validAfter"]) - int(b["validAfter"])) <= 2
    assert abs(int(a["validBefore"]) - int(b["validBefore"])) <= 2


async def test_tollways_facilitator_verifies_the_signatures(rt: Runtime) -> None:
    account = Account.create()
    await rt.devnet.fund(account.address, 5_000)
    now = int(time.time())

    offer = offer_v2()
    p = client.sign(offer, account, now)
    assert (p.valid_after, p.valid_before) == (now - 600, now + 300)
    assert p.payer == account.address and p.amount == 1000 and p.pay_to == PAY_TO
    assert await rt.facilitator.verify(p.payload, offer.raw) == {"isValid": True, "payer": account.address}

    # v1 on the facilitator's own chain, named by CAIP-2 id.
    o1 = offer_v1(NETWORK)
    p1 = client.sign(o1, account, now)
    assert (await rt.facilitator.verify(p1.payload, o1.raw))["isValid"] is True

    # Each payment has its own nonce; the domain is the offer's: another name fails.
    assert client.sign(offer, account, now).nonce != p.nonce
    other = offer_v2(requirements(extra={"name": "USDC", "version": "2"}))
    bad = client.sign(other, account, now)
    got = await rt.facilitator.verify(bad.payload, offer.raw)
    assert got["isValid"] is False


# ------------------------------------------------------------- bad 402s


def test_responses_that_are_not_x402_give_no_offers() -> None:
    assert client.required(200, {}, b'{"x402Version": 1}') is None
    assert client.offers(402, {"content-type": "text/html"}, b"<h1>pay up</h1>") == []
    assert client.offers(402, {}, b'{"error": "quota"}') == []
    assert client.offers(402, {}, b"") == []


@pytest.mark.parametrize(
    ("headers", "body", "says"),
    [
        ({"PAYMENT-REQUIRED": "%%% not base64"}, b"", "not base64 JSON"),
        ({"payment-required": b64([1, 2])}, b"", "not a JSON object"),
        ({"payment-required": b64({"x402Version": 3, "accepts": [requirements()]})}, b"", "x402Version 3"),
        ({"payment-required": b64({"x402Version": 2})}, b"", "accepts is missing or empty"),
        ({"payment-required": b64({"x402Version": 2, "accepts": []})}, b"", "accepts is missing or empty"),
        ({"payment-required": b64({"x402Version": 2, "accepts": ["x"]})}, b"", "accepts[0] is not an object"),
        (
            {"payment-required": b64({"x402Version": 2, "accepts": [requirements(amount="1.5")]})},
            b"",
            "accepts[0]: amount must be a non-negative integer",
        ),
        (
            {"payment-required": b64({"x402Version": 2, "accepts": [{**requirements(), "payTo": None}]})},
            b"",
            "accepts[0]: payTo is missing",
        ),
        (
            {"payment-required": b64({"x402Version": 2, "accepts": [requirements(extra=[1])]})},
            b"",
            "accepts[0]: extra is not an object",
        ),
        (
            {"payment-required": b64({"x402Version": 2, "resource": "x", "accepts": [requirements()]})},
            b"",
            "resource must be an object",
        ),
        ({}, json.dumps({"x402Version": 1, "accepts": [requirements()]}).encode(), "maxAmountRequired"),
        ({}, json.dumps({"x402Version": "1", "accepts": []}).encode(), "x402Version '1'"),
    ],
)
def test_a_malformed_402_is_a_clear_bad_gateway(headers: dict[str, str], body: bytes, says: str) -> None:
    with pytest.raises(TollwayError) as e:
        client.required(402, headers, body)
    assert e.value.code == "x402_malformed_402" and e.value.status == 502
    assert says in e.value.message


def test_a_402_with_no_payable_offer_says_why_each_was_passed_over() -> None:
    solana = {**requirements(), "network": "solana:5eykt4UsFv8P8NJdTREpY1vDqavBs8", "asset": "EPjF"}
    permit2 = requirements(extra={**EXTRA, "assetTransferMethod": "permit2"})
    other_asset = requirements(asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e")
    no_domain = requirements(extra={})
    upto = requirements(scheme="upto")
    body = {"x402Version": 2, "resource": {"url": "http://x"}, "accepts": [solana, permit2, other_asset]}
    body["accepts"] += [no_domain, upto]
    offers = client.offers(402, {"payment-required": b64(body)}, b"")
    assert len(offers) == 5
    assert client.choose(offers, allowed=devnet_asset) is None
    with pytest.raises(TollwayError) as e:
        client.pick(offers, allowed=devnet_asset)
    assert e.value.code == "x402_no_payable_offer" and e.value.status == 402
    msg = e.value.message
    assert "not an EVM chain" in msg and "'permit2' is not supported" in msg and "not allowed" in msg
    assert "EIP-712 domain" in msg and "scheme 'upto'" in msg
    # What is payable and allowed is chosen, in the server's order.
    assert client.choose(offers, allowed=lambda o: True) is offers[2]
    with pytest.raises(TollwayError) as e2:
        client.sign(offers[1], Account.create(), int(time.time()))
    assert e2.value.code == "x402_no_payable_offer"


def test_receipts() -> None:
    r = {"success": True, "payer": PAY_TO, "transaction": "0xab", "network": NETWORK}
    assert client.receipt({"PAYMENT-RESPONSE": b64(r)}) == r
    assert client.receipt([("X-Payment-Response", b64(r))]) == r
    assert client.receipt({"content-type": "application/json"}) is None
    with pytest.raises(TollwayError) as e:
        client.receipt({"payment-response": "garbage!"})
    assert e.value.code == "x402_malformed_receipt" and e.value.status == 502


def test_payment_header_and_v1_extra_as_a_json_string() -> None:
    o = offer_v1(extra=json.dumps(EXTRA))
    assert o.extra == EXTRA and o.chain_id == 84532
    name, value = client.payment_header(o, Account.create(), int(time.time()))
    decoded = json.loads(base64.b64decode(value))
    assert name == "X-PAYMENT" and decoded["network"] == "base-sepolia" and decoded["x402Version"] == 1
