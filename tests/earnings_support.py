"""Shared by the earnings tests: an agent that deployed a small app, its
rules over ``/v1/x402/rules``, and payments through the edge."""

from __future__ import annotations

import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provision_support import Agent, hello, provisioned
from x402_gateway_support import header, required
from x402_helpers import Payer

HOST = "shop.tollway.localhost"


def wallet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wallet signing keys (an agent's address) need the encryption key."""
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())


@contextlib.asynccontextmanager
async def shop(db_url: str, data_dir: Path, **x402: Any) -> AsyncIterator[Agent]:
    """A runtime with the edge, and an agent that deployed ``shop``."""
    async with provisioned(db_url, data_dir, sections={"x402": x402}) as a:
        await deploy(a, "shop")
        yield a


async def deploy(a: Agent, name: str, tag: str = "v1") -> None:
    r = await a.post("/deployments", {"name": name, "entrypoint": "app:app", "bundle": hello(tag)})
    assert r.status_code == 201, r.text


async def rule(a: Agent, **body: Any) -> httpx.Response:
    return await a.http.post("/v1/x402/rules", json=body, headers=a.auth)


async def edge(a: Agent, path: str, host: str = HOST, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.rt.provision.edge_port}", timeout=30) as c:
        return await c.get(path, headers={"host": host, **headers})


async def pay(a: Agent, payer: Payer, path: str, host: str = HOST) -> tuple[httpx.Response, dict[str, Any]]:
    """Ask, then pay what the 402 asks, as ``payer``: (the paid answer, the payment)."""
    r = await edge(a, path, host)
    assert r.status_code == 402, r.text
    reqs = required(r)["accepts"][0]
    payment = payer.v2(reqs)
    return await edge(a, path, host, **{"payment-signature": header(payment)}), payment


async def balance(a: Agent, account: str) -> int:
    return (await a.rt.ledger.get_account(account)).balance
