"""The broker pays x402 resources for agents, end to end over real HTTP:
tollway's own gateway on devnet, and a server behind the official x402 SDK's
middleware using tollway's facilitator. The agent never sees a key; what the
wallet spends is what the resource was paid; refusals cost nothing."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import ADMIN, settings_for
from test_x402_interop import official_server
from threaded import ThreadServer
from tollway.api.app import create_app
from x402_helpers import PAY_TO

RULE = {"name": "weather", "path": "/demo/weather", "origin": "demo", "price": "$0.001"}


class Stack:
    def __init__(self, url: str, official: str) -> None:
        self.url, self.official = url, official
        self.http = httpx.Client(base_url=url, timeout=60)

    def wallet(
        self, policy: dict[str, Any] | None = None, limits: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], str]:
        h = self.http
        w = h.post(
            "/admin/wallets", json={"owner": "ops", "policy": policy or {}, "with_key": True}, headers=ADMIN
        )
        assert w.status_code == 201, w.text
        wal = w.json()
        assert (
            h.post(f"/admin/wallets/{wal['id']}/topup", json={"amount": "$1"}, headers=ADMIN).status_code
            == 200
        )
        r = h.post(
            "/admin/x402/devnet/fund", json={"address": wal["evm_address"], "amount": "$1"}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
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


@pytest.fixture
def stack(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    settings = settings_for(
        db_url,
        x402={"pay_to": PAY_TO, "rules": [RULE]},
        wallets={"broker_allow": ["127.0.0.1"]},
    )
    with ThreadServer(create_app(settings)) as tw, ThreadServer(official_server(tw.url + "/x402")) as origin:
        s = Stack(tw.url, origin.url)
        yield s
        s.http.close()


def test_the_broker_pays_tollways_own_gateway(stack: Stack) -> None:
    wal, tok = stack.wallet()
    r = stack.fetch(tok, stack.url + "/demo/weather?city=Oslo")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == 200 and "Oslo" in out["body"]
    pay = out["payment"]
    assert pay["status"] == "paid" and pay["amount"] == 1000 and pay["pay_to"] == PAY_TO
    assert pay["receipt"]["success"] is True and pay["payer"] == wal["evm_address"]
    assert stack.available(wal["id"]) == 1_000_000 - 1000
    assert tok not in r.text and "private" not in r.text.lower()
    audit = stack.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN).json()["data"]
    assert [e["event"] for e in audit][:2] == ["capture", "authorization"]


def test_the_broker_pays_a_server_behind_the_official_middleware(stack: Stack) -> None:
    wal, tok = stack.wallet()
    r = stack.fetch(tok, stack.official + "/weather")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == 200 and out["payment"]["status"] == "paid", out
    assert stack.available(wal["id"]) == 1_000_000 - 1000
    # An origin that fails is not paid for: the hold is voided.
    r = stack.fetch(tok, stack.official + "/broken")
    assert r.status_code == 200 and r.json()["status"] == 500
    assert r.json()["payment"]["status"] == "not_paid" and r.json()["payment"]["amount"] == 0
    assert stack.available(wal["id"]) == 1_000_000 - 1000


def test_policy_refusals_and_bad_urls_pay_nothing(stack: Stack) -> None:
    wal, tok = stack.wallet({"blocked_categories": ["api_access"]})
    r = stack.fetch(tok, stack.url + "/demo/weather")
    assert r.status_code == 402 and r.json()["error"]["code"] == "category_blocked"
    for url, code in (
        ("ftp://x", "invalid_url"),
        ("http://user:pw@example.com/", "invalid_url"),
        ("nope", "invalid_url"),
    ):
        r = stack.fetch(tok, url)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    wal2, tok2 = stack.wallet(limits={"max_per_payment": 999})
    r = stack.fetch(tok2, stack.url + "/demo/weather")
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded"
    r = stack.fetch(tok2, stack.url + "/demo/weather", max_amount=500)
    assert r.status_code == 402 and r.json()["error"]["code"] == "x402_no_payable_offer"
    assert stack.available(wal["id"]) == stack.available(wal2["id"]) == 1_000_000
    r = stack.fetch(tok, stack.url + "/healthz")  # free resources pass through, nothing held
    assert r.status_code == 200 and r.json()["payment"] is None


def test_private_networks_are_refused_unless_allowed(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    settings = settings_for(db_url, x402={"pay_to": PAY_TO, "rules": [RULE]})
    with ThreadServer(create_app(settings)) as tw:
        s = Stack(tw.url, "")
        wal, tok = s.wallet()
        for url in (tw.url + "/demo/weather", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/"):
            r = s.fetch(tok, url)
            assert r.status_code == 400 and r.json()["error"]["code"] == "url_not_allowed", r.text
        assert s.available(wal["id"]) == 1_000_000
        s.http.close()
