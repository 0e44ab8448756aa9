"""The broker over real HTTP: a tollway (its own paid route on devnet), and
origins that ask the broker to pay, honest or hostile."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import ADMIN, settings_for
from threaded import ThreadServer
from tollway.api.app import create_app
from tollway.x402.config import DEVNET_ASSET
from x402_helpers import EXTRA, PAY_TO

RULE = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}


class Stack:
    def __init__(self, url: str, official: str) -> None:
        self.url, self.official = url, official
        self.http = httpx.Client(base_url=url, timeout=60)
        self.app: Any = None  # tollway's app: app.state.runtime is its Runtime

    def wallet(
        self,
        policy: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        *,
        fund_devnet: bool = False,
    ) -> tuple[dict[str, Any], str]:
        """A wallet with $1 in its ledger account (the one balance the broker pays
        from) and a token. ``fund_devnet``: also mint $1 of devnet tokens to its
        address, as broker payments once needed: they must not be drawn from."""
        h = self.http
        w = h.post(
            "/admin/wallets", json={"owner": "ops", "policy": policy or {}, "with_key": True}, headers=ADMIN
        )
        assert w.status_code == 201, w.text
        wal = w.json()
        r = h.post(f"/admin/wallets/{wal['id']}/topup", json={"amount": "$1"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        if fund_devnet:
            body = {"address": wal["evm_address"], "amount": "$1"}
            assert h.post("/admin/x402/devnet/fund", json=body, headers=ADMIN).status_code == 200
        tok = h.post(
            f"/admin/wallets/{wal['id']}/tokens", json={"limits": limits or {}}, headers=ADMIN
        ).json()["token"]
        return wal, tok

    def fetch(self, token: str, url: str, **over: Any) -> httpx.Response:
        return self.http.post(
            "/v1/broker/fetch", json={"url": url, **over}, headers={"authorization": f"Bearer {token}"}
        )

    def available(self, wallet_id: str) -> int:
        out: int = self.http.get(f"/admin/wallets/{wallet_id}", headers=ADMIN).json()["available"]
        return out

    def account(self, account_id: str) -> int:
        """A ledger account's balance (0 when it does not exist)."""
        r = self.http.get(f"/admin/ledger/accounts/{account_id}", headers=ADMIN)
        out: int = r.json()["balance"] if r.status_code == 200 else 0
        return out

    def settle(self, payload: dict[str, Any], reqs: dict[str, Any]) -> dict[str, Any]:
        """Anyone may call the facilitator: ``POST /x402/settle`` needs no key."""
        body = {"x402Version": payload["x402Version"], "paymentPayload": payload, "paymentRequirements": reqs}
        out: dict[str, Any] = self.http.post("/x402/settle", json=body).json()
        return out


class Hostile:
    """An origin that asks for ``price`` micro-USD (v1 402, a ``maxTimeoutSeconds``
    of 1e10), keeps every payment it is sent, answers 500, and when
    ``settle_first`` settles the payment through tollway before answering."""

    def __init__(self, price: int = 100_000) -> None:
        self.price, self.requests, self.settle_first = price, 0, False
        self.network, self.asset = "eip155:31337", DEVNET_ASSET
        self.kept: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.tollway = ""

    def app(self) -> Starlette:
        async def paid(request: Request) -> JSONResponse:
            self.requests += 1
            reqs = {
                "scheme": "exact", "network": self.network, "maxAmountRequired": str(self.price),
                "resource": str(request.url), "description": "", "mimeType": "application/json",
                "payTo": request.query_params.get("pay_to", PAY_TO), "maxTimeoutSeconds": 10**10,
                "asset": self.asset, "extra": dict(EXTRA),
            }  # fmt: skip
            header = request.headers.get("x-payment")
            if header is None:
                return JSONResponse({"x402Version": 1, "accepts": [reqs], "error": ""}, status_code=402)
            payload = json.loads(base64.b64decode(header))
            self.kept.append((payload, reqs))
            if self.settle_first:
                body = {"x402Version": 1, "paymentPayload": payload, "paymentRequirements": reqs}
                async with httpx.AsyncClient() as c:
                    await c.post(self.tollway + "/x402/settle", json=body)
            return JSONResponse({"error": "kept your payment"}, status_code=500)

        return Starlette(routes=[Route("/paid", paid)])


@contextmanager
def tollway_with(
    db_url: str, monkeypatch: pytest.MonkeyPatch, origin: Any, **wallets: Any
) -> Iterator[tuple[Stack, str]]:
    """A tollway whose broker may reach 127.0.0.1, and ``origin`` (an ASGI app
    factory given tollway's URL) served beside it: (the stack, the origin's URL).
    ``wallets``: more ``[wallets]`` settings."""
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    s = settings_for(
        db_url, x402={"pay_to": PAY_TO, "rules": [RULE]}, wallets={"broker_allow": ["127.0.0.1"], **wallets}
    )
    app = create_app(s)
    with ThreadServer(app) as tw, ThreadServer(origin(tw.url)) as o:
        stack = Stack(tw.url, o.url)
        stack.app = app
        try:
            yield stack, o.url
        finally:
            stack.http.close()
