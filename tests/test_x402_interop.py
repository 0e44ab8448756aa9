"""Interoperability with the official ``x402`` SDK (2.x), over real HTTP:
its resource server (``x402ResourceServer`` + ``PaymentMiddlewareASGI``)
verifies and settles through tollway's facilitator, and its clients
(``x402HttpxClient``, ``x402_requests``) pay with an eth-account signer,
with spend controls allowing the devnet asset."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI
from x402 import x402Client, x402ClientSync
from x402.http import FacilitatorConfig, HTTPFacilitatorClient, PaymentOption, RouteConfig
from x402.http.clients import x402_requests, x402HttpxClient
from x402.http.middleware.fastapi import PaymentMiddlewareASGI
from x402.mechanisms.evm.exact import ExactEvmServerScheme, register_exact_evm_client
from x402.schemas import AssetAmount

from conftest import settings_for
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.settings import Settings
from tollway.x402.config import DEVNET_ASSET
from x402_helpers import EXTRA, NETWORK, PAY_TO

SPEND = {"allowed_assets": [{"network": NETWORK, "asset": DEVNET_ASSET, "max_amount_per_payment": "1000000"}]}


def official_server(facilitator_url: str) -> FastAPI:
    server = __import__("x402").x402ResourceServer(
        HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url))
    )
    server.register(NETWORK, ExactEvmServerScheme())
    price = AssetAmount(amount="1000", asset=DEVNET_ASSET, extra=dict(EXTRA))
    routes = {
        "GET /weather": RouteConfig(
            accepts=[PaymentOption(scheme="exact", pay_to=PAY_TO, price=price, network=NETWORK)],
            description="Weather report",
            mime_type="application/json",
        ),
        "GET /broken": RouteConfig(
            accepts=[PaymentOption(scheme="exact", pay_to=PAY_TO, price=price, network=NETWORK)],
            description="An origin that fails",
            mime_type="application/json",
        ),
    }
    app = FastAPI()

    @app.get("/weather")
    async def weather() -> dict[str, Any]:
        return {"weather": "sunny", "temperature": 70}

    @app.get("/broken")
    async def broken() -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": "origin down"}, status_code=500)

    app.add_middleware(PaymentMiddlewareASGI, routes=routes, server=server)
    return app


@pytest.fixture
def stack(settings: Settings) -> Iterator[tuple[str, Settings]]:
    """tollway (the facilitator) and the official server in front of an origin."""
    with ThreadServer(create_app(settings)) as tw, ThreadServer(official_server(tw.url + "/x402")) as origin:
        yield origin.url, settings


def on_devnet(settings: Settings, coro: Any) -> Any:
    async def go() -> Any:
        rt = Runtime.build(settings)
        try:
            return await coro(rt)
        finally:
            await rt.close()

    return asyncio.run(go())


def pay_with_httpx(payer: Any, url: str) -> httpx.Response:
    """GET ``url`` with the official async client, paying as ``payer`` (eth-account signer,
    spend controls allowing the devnet asset)."""

    async def go() -> httpx.Response:
        client = x402Client()
        register_exact_evm_client(client, payer)
        client.set_spend_controls(SPEND)
        async with x402HttpxClient(client, timeout=30) as http:
            return await http.get(url)

    return asyncio.run(go())


def receipt(r: httpx.Response | Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(base64.b64decode(r.headers["PAYMENT-RESPONSE"]))
    return out


def test_official_clients_pay_through_the_official_server_on_tollways_facilitator(
    stack: tuple[str, Settings],
) -> None:
    url, settings = stack
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))

    r = pay_with_httpx(payer, url + "/weather")
    assert r.status_code == 200, r.text
    assert r.json() == {"weather": "sunny", "temperature": 70}
    got = receipt(r)
    assert got["success"] is True and got["payer"] == payer.address and got["network"] == NETWORK

    sync = x402ClientSync()
    register_exact_evm_client(sync, payer)
    sync.set_spend_controls(SPEND)
    session = x402_requests(sync)
    r2 = session.get(url + "/weather", timeout=30)
    assert r2.status_code == 200, r2.text
    assert receipt(r2)["success"] is True

    async def state(rt: Runtime) -> tuple[int, int]:
        return await rt.devnet.balance(payer.address), (await rt.ledger.get_account("sys_revenue")).balance

    assert on_devnet(settings, state) == (3_000, 2_000)


def test_unpaid_request_gets_402_and_an_origin_failure_is_not_settled(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    r = httpx.get(url + "/weather")
    assert r.status_code == 402 and "PAYMENT-REQUIRED" in r.headers
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))

    r = pay_with_httpx(payer, url + "/broken")
    assert r.status_code == 500
    assert on_devnet(settings, lambda rt: rt.devnet.balance(payer.address)) == 5_000


def test_a_payer_without_funds_is_refused_with_the_reason(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    payer = Account.create()

    r = pay_with_httpx(payer, url + "/weather")
    assert r.status_code == 402
    required = json.loads(base64.b64decode(r.headers["PAYMENT-REQUIRED"]))
    assert required["error"] == "insufficient_funds"


@pytest.fixture
def paid_tollway(db_url: str) -> Iterator[tuple[str, Settings]]:
    """tollway's own gateway, with the demo route at $0.001."""
    rule = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule]})
    with ThreadServer(create_app(settings)) as tw:
        yield tw.url, settings


def test_official_clients_pay_tollways_gateway(paid_tollway: tuple[str, Settings]) -> None:
    url, settings = paid_tollway
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))

    r = pay_with_httpx(payer, url + "/demo/weather?city=Oslo")
    assert r.status_code == 200, r.text
    assert r.json()["city"] == "Oslo" and receipt(r)["success"] is True

    sync = x402ClientSync()
    register_exact_evm_client(sync, payer)
    sync.set_spend_controls(SPEND)
    r2 = x402_requests(sync).get(url + "/demo/weather", timeout=30)
    assert r2.status_code == 200 and receipt(r2)["payer"] == payer.address

    async def state(rt: Runtime) -> tuple[int, int]:
        return await rt.devnet.balance(payer.address), (await rt.ledger.get_account("sys_revenue")).balance

    assert on_devnet(settings, state) == (3_000, 2_000)


class _V1Only(httpx.AsyncBaseTransport):
    """Hides the v2 PAYMENT-REQUIRED header, so the SDK falls back to the 402's v1 body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        r = await self.inner.handle_async_request(request)
        if "payment-required" in r.headers:
            del r.headers["payment-required"]
        return r

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_the_official_v1_client_pays_with_x_payment(db_url: str) -> None:
    """The SDK's v1 scheme names chains (no name for 31337), so this devnet runs on
    Base Sepolia's chain id; the 402's v1 body is what the client reads."""
    from x402.http.clients.httpx import x402AsyncTransport

    rule = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [rule], "network": "eip155:84532"})
    payer = Account.create()
    on_devnet(settings, lambda rt: rt.devnet.fund(payer.address, 5_000))
    with ThreadServer(create_app(settings)) as tw:

        async def pay() -> httpx.Response:
            client = x402Client()
            register_exact_evm_client(client, payer)
            client.set_spend_controls(
                {"allowed_assets": [{"network": "base-sepolia", "asset": DEVNET_ASSET}]}
            )
            transport = x402AsyncTransport(client, transport=_V1Only())
            async with httpx.AsyncClient(transport=transport, timeout=30) as http:
                return await http.get(tw.url + "/demo/weather")

        r = asyncio.run(pay())
    assert r.status_code == 200, r.text
    got = json.loads(base64.b64decode(r.headers["X-PAYMENT-RESPONSE"]))
    assert got["success"] is True and got["payer"] == payer.address
    assert on_devnet(settings, lambda rt: rt.devnet.balance(payer.address)) == 4_000
