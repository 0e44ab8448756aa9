"""Paid routes through an external facilitator (here: another tollway, over
HTTP, with its own database), recorded as revenue in this tollway's ledger."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import settings_for
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.runtime import Runtime
from tollway.settings import Settings
from x402_helpers import PAY_TO, Payer

RULE = {"name": "demo", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}


@pytest.fixture
def facilitator(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[str, Settings]]:
    """Another tollway, serving only its facilitator, on a database of its own."""
    db = tmp_path / "facilitator.db"
    db.write_bytes(sqlite_template.read_bytes())
    settings = settings_for(f"sqlite:///{db}")
    with ThreadServer(create_app(settings)) as srv:
        yield srv.url + "/x402", settings


async def gateway(db_url: str, facilitator_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = settings_for(
        db_url, x402={"pay_to": PAY_TO, "rules": [RULE], "facilitator_url": facilitator_url}
    )
    rt = Runtime.build(settings)
    transport = httpx.ASGITransport(app=create_app(rt=rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as c:
        yield c, rt
    await rt.close()


async def on(settings: Settings, fn: Any) -> Any:
    rt = Runtime.build(settings)
    try:
        return await fn(rt)
    finally:
        await rt.close()


def header(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def required(r: httpx.Response) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(base64.b64decode(r.headers["payment-required"]))
    return out


async def test_external_facilitator_settles_and_the_gateway_books_revenue(
    db_url: str, facilitator: tuple[str, Settings]
) -> None:
    url, fac_settings = facilitator
    p = Payer()
    await on(fac_settings, lambda rt: rt.devnet.fund(p.address, 5_000))
    async for c, rt in gateway(db_url, url):
        accept = required(await c.get("/demo/weather"))["accepts"][0]
        bad = await c.get("/demo/weather", headers={"payment-signature": header(p.v2(accept, value=1))})
        assert bad.status_code == 402
        assert required(bad)["error"] == "invalid_exact_evm_payload_authorization_value"
        payment = header(p.v2(accept))
        r = await c.get("/demo/weather", headers={"payment-signature": payment})
        assert r.status_code == 200, r.text
        receipt = json.loads(base64.b64decode(r.headers["payment-response"]))
        assert receipt["success"] is True and receipt["transaction"].startswith("0x")
        assert (await rt.ledger.get_account("sys_revenue")).balance == 1000
        again = await c.get("/demo/weather", headers={"payment-signature": payment})
        assert required(again)["error"] == "invalid_exact_evm_nonce_already_used"
    assert await on(fac_settings, lambda rt: rt.devnet.balance(p.address)) == 4_000


async def test_an_unreachable_facilitator_refuses_and_forwards_nothing(db_url: str) -> None:
    p = Payer()
    async for c, rt in gateway(db_url, "http://127.0.0.1:9/x402"):
        accept = required(await c.get("/demo/weather"))["accepts"][0]
        r = await c.get("/demo/weather", headers={"payment-signature": header(p.v2(accept))})
        assert r.status_code == 402 and required(r)["error"] == "unexpected_verify_error"
        assert (await rt.ledger.get_account("sys_revenue")).balance == 0
    await asyncio.sleep(0)
