"""The paywall with ``upto``: an AI route offers exact (its maximum cost) and
upto (the maximum as a ceiling); an upto payment is verified for the maximum,
the request is served, and the metered cost of what was served is settled
once, reported in ``PAYMENT-RESPONSE`` (a stream: settled after its last
byte). Interop: the official SDK's upto client pays a tollway AI route over
real HTTP, and the SDK's resource server settles through tollway's facilitator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI
from x402 import x402Client
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption, RouteConfig
from x402.http.clients import x402HttpxClient
from x402.http.middleware.fastapi import PaymentMiddlewareASGI, set_settlement_overrides
from x402.mechanisms.evm.upto import UptoEvmClientScheme, UptoEvmServerScheme
from x402.schemas import AssetAmount

from conftest import settings_for
from fake_upstream import FakeUpstream, model
from test_x402_interop import on_devnet, receipt
from test_x402_remote import facilitator, on
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.settings import Settings
from tollway.x402.config import DEVNET_ASSET
from tollway.x402.devnet import FACILITATOR_ADDRESS
from x402_gateway_support import Origin, asgi_scope, funded, header, required, revenue
from x402_helpers import EXTRA, NETWORK, PAY_TO, Payer, upto_v2

__all__ = ["facilitator"]  # a fixture (another tollway's facilitator)

SPEND = {"allowed_assets": [{"network": NETWORK, "asset": DEVNET_ASSET, "max_amount_per_payment": "1000000"}]}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
# Dear enough that a few tokens cost many micro-USD: the maximum (50 tokens) and
# the metered cost (the 6 the fake upstream answers with) are far apart.
PRICED = {"neurons_per_m_input": 2_000_000, "neurons_per_m_output": 20_000_000}


def ai_settings(db_url: str, up: FakeUpstream, *more: dict[str, Any], **rule: Any) -> Settings:
    r = {"name": "ai", "methods": ["POST"], "path": "/v1/chat/completions", "origin": "self"}
    r |= {"price_by": "ai_max_cost", **rule}
    x402 = {"pay_to": PAY_TO, "rules": [r, *more]}
    return settings_for(db_url, x402=x402, models=[model("m", up.url, **PRICED)])


@pytest.fixture
async def ai(db_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime, FakeUpstream]]:
    with FakeUpstream() as up:
        rt = Runtime.build(ai_settings(db_url, up))
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
        try:
            yield c, rt, up
        finally:
            await c.aclose()
            await rt.close()


def metered(rt: Runtime, usage: dict[str, int]) -> int:
    """What the answer's tokens cost, in micro-USD (= the devnet asset's units)."""
    return rt.inference.price(
        rt.inference.model("m", "chat"), usage["prompt_tokens"], usage["completion_tokens"]
    )[1]


async def offers(c: httpx.AsyncClient, body: dict[str, Any] = BODY) -> dict[str, dict[str, Any]]:
    r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 402
    return {a["scheme"]: a for a in required(r)["accepts"]}


async def test_an_ai_route_offers_exact_and_upto_at_its_maximum(ai: Any) -> None:
    c, rt, _ = ai
    o = await offers(c)
    assert list(o) == ["exact", "upto"]
    assert o["upto"]["amount"] == o["exact"]["amount"]
    assert o["upto"]["extra"] == {
        **EXTRA,
        "assetTransferMethod": "permit2",
        "facilitatorAddress": rt.facilitator.address,
    }
    v1 = (await c.post("/v1/chat/completions", json=BODY)).json()
    assert [a["scheme"] for a in v1["accepts"]] == ["exact"]  # v1 has no upto
    found = (await c.get("/x402/discovery/resources", params={"scheme": "upto"})).json()["items"]
    assert [[a["scheme"] for a in i["accepts"]] for i in found] == [["upto"]]


async def test_an_upto_payment_settles_the_metered_cost_not_the_maximum(ai: Any) -> None:
    c, rt, _ = ai
    up = (await offers(c))["upto"]
    ceiling = int(up["amount"])
    p = await funded(rt, 1_000_000)
    r = await c.post("/v1/chat/completions", json=BODY, headers={"payment-signature": header(upto_v2(p, up))})
    assert r.status_code == 200, r.text
    cost = metered(rt, r.json()["usage"])
    assert 0 < cost < ceiling
    got = receipt(r)
    assert (got["success"], got["amount"], got["payer"]) == (True, str(cost), p.address)
    assert await rt.devnet.balance(p.address) == 1_000_000 - cost and await revenue(rt) == cost
    # The authorization ran once: presented again, it is refused before anything runs.
    again = await c.post(
        "/v1/chat/completions", json=BODY, headers={"payment-signature": header(upto_v2(p, up, nonce=1))}
    )
    assert again.status_code == 200  # a new permit (another nonce) pays again
    replay = await c.post(
        "/v1/chat/completions", json=BODY, headers={"payment-signature": header(upto_v2(p, up, nonce=1))}
    )
    assert replay.status_code == 402 and required(replay)["error"] == "invalid_exact_evm_nonce_already_used"
    assert await revenue(rt) == 2 * cost


async def test_a_stream_paid_with_upto_settles_its_final_cost_after_the_last_byte(ai: Any) -> None:
    c, rt, _ = ai
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    up = (await offers(c, body))["upto"]
    p = await funded(rt, 1_000_000)
    r = await c.post("/v1/chat/completions", json=body, headers={"payment-signature": header(upto_v2(p, up))})
    assert r.status_code == 200 and "[DONE]" in r.text
    assert "payment-response" not in r.headers  # the headers left before the cost was known
    usage = next(
        json.loads(line[6:])["usage"]
        for line in r.text.splitlines()
        if line.startswith("data: {") and '"usage"' in line
    )
    cost = metered(rt, usage)
    assert 0 < cost < int(up["amount"])
    assert await rt.devnet.balance(p.address) == 1_000_000 - cost and await revenue(rt) == cost


async def test_an_upto_payment_for_a_failed_request_settles_nothing_and_may_be_retried(ai: Any) -> None:
    c, rt, upstream = ai
    up = (await offers(c))["upto"]
    p = await funded(rt, 1_000_000)
    payment = {"payment-signature": header(upto_v2(p, up))}
    upstream.fail_next(10)
    failed = await c.post("/v1/chat/completions", json=BODY, headers=payment)
    assert failed.status_code >= 500 and "payment-response" not in failed.headers
    assert await rt.devnet.balance(p.address) == 1_000_000 and await revenue(rt) == 0
    with upstream._lock:
        upstream._fail.clear()
    ok = await c.post("/v1/chat/completions", json=BODY, headers=payment)
    assert ok.status_code == 200 and receipt(ok)["amount"] == str(metered(rt, ok.json()["usage"]))


async def test_one_upto_payment_sent_twice_at_once_runs_and_settles_once(ai: Any) -> None:
    c, rt, upstream = ai
    up = (await offers(c))["upto"]
    p = await funded(rt, 1_000_000)
    payment = {"payment-signature": header(upto_v2(p, up))}
    upstream.delay_s = 0.2  # both requests are in flight together
    rs = await asyncio.gather(*[c.post("/v1/chat/completions", json=BODY, headers=payment) for _ in range(4)])
    ok = [r for r in rs if r.status_code == 200]
    assert len(ok) == 1, [r.status_code for r in rs]
    assert {required(r)["error"] for r in rs if r.status_code != 200} <= {
        "payment_in_use",
        "invalid_exact_evm_nonce_already_used",
    }
    cost = metered(rt, ok[0].json()["usage"])
    assert await revenue(rt) == cost and await rt.devnet.balance(p.address) == 1_000_000 - cost
    assert upstream.calls == 1


async def test_the_schemes_a_rule_offers(db_url: str) -> None:
    """A rule's schemes: an exact-only AI route refuses upto; an upto-only demo
    route settles its price (no metering, no Settlement-Overrides)."""
    demo = {"name": "w", "path": "/demo/weather", "origin": "demo", "price": "$0.001", "schemes": ["upto"]}
    with FakeUpstream() as upstream:
        rt = Runtime.build(ai_settings(db_url, upstream, demo, schemes=["exact"]))
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
        try:
            assert list(await offers(c)) == ["exact"]
            p = await funded(rt, 1_000_000)
            exact = (await offers(c))["exact"]
            r = await c.post(
                "/v1/chat/completions",
                json=BODY,
                headers={"payment-signature": header(upto_v2(p, {**exact, "scheme": "upto"}))},
            )
            assert r.status_code == 402 and required(r)["error"] == "unsupported_scheme"
            w = await c.get("/demo/weather")
            [up] = required(w)["accepts"]
            assert up["scheme"] == "upto" and up["amount"] == "1000" and w.json()["accepts"] == []
            page = await c.get("/demo/weather", headers={"accept": "text/html"})
            assert page.status_code == 402 and "1000 units" in page.text
            paid = await c.get("/demo/weather", headers={"payment-signature": header(upto_v2(p, up))})
            assert paid.status_code == 200 and receipt(paid)["amount"] == "1000"
            assert await revenue(rt) == 1000
        finally:
            await c.aclose()
            await rt.close()


# ----------------------------------------------------------------- interop


def pay_upto(payer: Any, method: str, url: str, **kw: Any) -> httpx.Response:
    """The official SDK's async client with only its upto scheme registered."""

    async def go() -> httpx.Response:
        client = x402Client()
        client.register("eip155:*", UptoEvmClientScheme(payer))
        client.set_spend_controls(SPEND)
        async with x402HttpxClient(client, timeout=30) as http:
            return await http.request(method, url, **kw)

    return asyncio.run(go())


@pytest.fixture
def served(db_url: str) -> Iterator[tuple[str, Settings]]:
    with FakeUpstream() as up:
        settings = ai_settings(db_url, up)
        with ThreadServer(create_app(settings)) as tw:
            yield tw.url, settings


def test_the_official_upto_client_pays_a_tollway_ai_route_the_metered_cost(
    served: tuple[str, Settings],
) -> None:
    url, settings = served
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 1_000_000))
    accepts = required(httpx.post(url + "/v1/chat/completions", json=BODY))["accepts"]
    ceiling = int(next(a for a in accepts if a["scheme"] == "upto")["amount"])

    r = pay_upto(payer, "POST", url + "/v1/chat/completions", json=BODY)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    usage = r.json()["usage"]

    async def cost_of(rt: Runtime) -> int:
        return metered(rt, usage)

    cost = on_devnet(settings, cost_of)
    assert 0 < cost < ceiling
    assert receipt(r)["amount"] == str(cost) and receipt(r)["payer"] == payer.address

    async def state(rt: Runtime) -> tuple[int, int]:
        return await rt.devnet.balance(payer.address), await revenue(rt)

    assert on_devnet(settings, state) == (1_000_000 - cost, cost)  # charged the metered cost, not the maximum


def official_upto_server(facilitator_url: str) -> FastAPI:
    """The SDK's resource server, upto only, settling through tollway's facilitator;
    the route names what it used with the SDK's settlement override."""
    server = __import__("x402").x402ResourceServer(
        HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url))
    )
    server.register(NETWORK, UptoEvmServerScheme())
    price = AssetAmount(amount="1000", asset=DEVNET_ASSET, extra=dict(EXTRA))
    option = PaymentOption(scheme="upto", pay_to=PAY_TO, price=price, network=NETWORK)
    routes = {"GET /metered": RouteConfig(accepts=[option], description="Pay for what you use")}
    app = FastAPI()

    @app.get("/metered")
    async def metered_route() -> Any:
        from fastapi.responses import JSONResponse

        r = JSONResponse({"used": 300})
        set_settlement_overrides(r, {"amount": "300"})
        return r

    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


def test_the_official_resource_server_settles_upto_through_tollways_facilitator(db_url: str) -> None:
    settings = settings_for(db_url)
    with (
        ThreadServer(create_app(settings)) as tw,
        ThreadServer(official_upto_server(tw.url + "/x402")) as origin,
    ):
        payer = Account.create()
        on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))
        r = pay_upto(payer, "GET", origin.url + "/metered")
        assert r.status_code == 200, r.text
        got = receipt(r)
        assert got["success"] is True and got["amount"] == "300" and got["payer"] == payer.address

        async def state(rt: Runtime) -> tuple[int, int]:
            return await rt.devnet.balance(payer.address), await revenue(rt)

        assert on_devnet(settings, state) == (4_700, 300)


async def test_a_client_that_leaves_mid_stream_pays_for_what_was_produced(ai: Any) -> None:
    """The stream is settled when it ends, however it ends: a client gone after
    the first words pays the cost the charge path meters for what was
    produced (something, at most the whole answer), once."""
    c, rt, upstream = ai
    body = {**BODY, "stream": True}
    up = (await offers(c, body))["upto"]
    p = await funded(rt, 1_000_000)
    upstream.chunk_delay_s = 0.2
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not getattr(receive, "sent", False):
            receive.sent = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:  # as uvicorn: nothing is sent once the client left
        if msg["type"] == "http.response.body" and b"Hello" in msg.get("body", b""):
            gone.set()

    payment = {"content-type": "application/json", "payment-signature": header(upto_v2(p, up))}
    scope = asgi_scope("POST", b"/v1/chat/completions", payment)
    await c._transport.app(scope, receive, send)  # type: ignore[attr-defined]
    assert gone.is_set()
    paid = 1_000_000 - await rt.devnet.balance(p.address)
    whole = metered(rt, {"prompt_tokens": 10, "completion_tokens": 6})
    assert 0 < paid <= whole and await revenue(rt) == paid


# -------------------------------------------------------- other origins


METERED = {"name": "metered", "path": "/api/*", "origin": "", "price": "$0.001", "schemes": ["upto"]}


async def test_an_origin_names_what_was_used_with_settlement_overrides(
    db_url: str, origin: tuple[Origin, str]
) -> None:
    """An origin's ``Settlement-Overrides`` amount is settled (at most the
    maximum; the header never reaches the client); without one, or with one
    that is not an atomic amount, the maximum is."""
    _, base = origin
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [{**METERED, "origin": base}]})
    rt = Runtime.build(settings)
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
    try:
        p = await funded(rt, 100_000)
        paid = []
        for path in ("/api/used/300", "/api/used/5000", "/api/used/$0.0001", "/api/plain"):
            [up] = required(await c.get(path))["accepts"]
            r = await c.get(path, headers={"payment-signature": header(upto_v2(p, up))})
            assert r.status_code == 200 and "settlement-overrides" not in r.headers, r.headers
            paid.append(int(receipt(r)["amount"]))
        assert paid == [300, 1000, 1000, 1000]
        assert await rt.devnet.balance(p.address) == 100_000 - sum(paid) and await revenue(rt) == sum(paid)
    finally:
        await c.aclose()
        await rt.close()


async def test_upto_through_an_external_facilitator(
    db_url: str, origin: tuple[Origin, str], facilitator: tuple[str, Settings]
) -> None:
    """Paid routes that verify and settle through another facilitator offer upto
    with the address its ``/supported`` names; what was used is settled there
    and booked here."""
    _, base = origin
    url, fac_settings = facilitator
    p = Payer()
    await on(fac_settings, lambda rt: rt.devnet.fund(p.address, 5_000))
    rule = {**METERED, "origin": base}
    rt = Runtime.build(settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule], "facilitator_url": url}))
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t.test")
    try:
        [up] = required(await c.get("/api/used/250"))["accepts"]
        assert up["scheme"] == "upto" and up["extra"]["facilitatorAddress"] == FACILITATOR_ADDRESS
        r = await c.get("/api/used/250", headers={"payment-signature": header(upto_v2(p, up))})
        assert r.status_code == 200 and receipt(r)["amount"] == "250", r.headers
        assert await revenue(rt) == 250  # booked here, from x402_external_inbound
    finally:
        await c.aclose()
        await rt.close()
    assert await on(fac_settings, lambda frt: frt.devnet.balance(p.address)) == 4_750
