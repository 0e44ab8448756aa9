"""The broker pays x402 resources for agents, end to end over real HTTP:
tollway's own gateway on devnet, and a server behind the official x402 SDK's
middleware using tollway's facilitator. The agent never sees a key; what the
wallet spends is what the resource was paid; refusals cost nothing."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import pytest

from broker_support import RULE, Stack, tollway_with
from conftest import ADMIN, settings_for
from test_x402_interop import official_server
from threaded import ThreadServer
from tollway.api.app import create_app
from x402_helpers import PAY_TO


@pytest.fixture
def stack(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    with tollway_with(db_url, monkeypatch, lambda tollway: official_server(tollway + "/x402")) as (s, _):
        yield s


def test_the_broker_pays_tollways_own_gateway(stack: Stack) -> None:
    wal, tok = stack.wallet()
    r = stack.fetch(tok, stack.url + "/demo/weather?city=Oslo")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == 200 and "Oslo" in out["body"]
    pay = out["payment"]
    assert pay["status"] == "paid" and pay["amount"] == 1000 and pay["pay_to"] == PAY_TO
    assert pay["receipt"]["success"] is True and pay["payer"] == wal["evm_address"]
    # One balance, one debit: the wallet's ledger account paid (no devnet funding
    # needed or touched), and the settlement moved that amount on to revenue.
    assert stack.available(wal["id"]) == 1_000_000 - 1000
    assert stack.account(f"x402dev_{wal['evm_address'].lower()}") == 0
    assert stack.account("sys_revenue") == 1000 and stack.account("sys_settlement") == 0
    assert tok not in r.text and "private" not in r.text.lower()
    audit = stack.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN).json()["data"]
    assert [(e["event"], e["actor"]) for e in audit][:2] == [
        ("capture", "x402_settle"),
        ("authorization", "agent"),
    ]


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
