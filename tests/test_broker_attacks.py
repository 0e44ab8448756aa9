"""The broker against a hostile origin: a payment the broker signs is valid
for minutes, is paid from the wallet's hold (one balance, one debit), can be
settled once, and only while that hold stands; a kept signature settled later
takes nothing; the host's payee rules apply; a dead token fetches nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker_support import Hostile, Stack, tollway_with
from conftest import ADMIN
from tollway.x402.config import DEVNET_ASSET

BASE_USDC = {"network": "eip155:8453", "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"}


@pytest.fixture
def hostile(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Hostile]]:
    h = Hostile()

    def origin(tollway: str) -> object:
        h.tollway = tollway
        return h.app()

    assets = [{"network": "eip155:31337", "asset": DEVNET_ASSET}, BASE_USDC]
    with tollway_with(db_url, monkeypatch, origin, broker_assets=assets) as (s, url):
        s.official = url
        yield s, h


def test_kept_signatures_settled_later_take_nothing(hostile: tuple[Stack, Hostile]) -> None:
    """The issue's attack: the origin answers 500, keeps 5 payments of $0.10
    (asking for a 1e10 s validity) and settles them later. Each signature is
    valid for minutes, and the broker's void cancelled it: nothing settles."""
    s, h = hostile
    wal, tok = s.wallet({"spending_limits": [{"amount": "$0.10", "interval": "daily"}]}, fund_devnet=True)
    for _ in range(5):
        r = s.fetch(tok, s.official + "/paid")
        assert r.status_code == 200 and r.json()["status"] == 500, r.text
        assert r.json()["payment"]["status"] == "not_paid"
    assert len(h.kept) == 5
    now = int(time.time())
    for payload, _ in h.kept:
        assert int(payload["payload"]["authorization"]["validBefore"]) <= now + 180
    results = [s.settle(payload, reqs) for payload, reqs in h.kept]
    assert [x["success"] for x in results] == [False] * 5, results
    assert s.available(wal["id"]) == 1_000_000
    assert s.account("sys_revenue") == 0
    assert s.account(f"x402dev_{wal['evm_address'].lower()}") == 1_000_000  # never drawn from


def test_an_origin_that_settles_is_paid_once_from_the_wallet_within_its_limit(
    hostile: tuple[Stack, Hostile],
) -> None:
    """The origin settles each payment itself, then answers 500: the settlement
    captured the hold, so the wallet's ledger shows the spend, its daily limit
    refuses the fetch beyond it, and settling the kept payments again takes nothing."""
    s, h = hostile
    h.price, h.settle_first = 40_000, True
    wal, tok = s.wallet({"spending_limits": [{"amount": "$0.10", "interval": "daily"}]}, fund_devnet=True)
    for _ in range(2):
        r = s.fetch(tok, s.official + "/paid")
        pay = r.json()["payment"]
        assert r.json()["status"] == 500 and pay["status"] == "paid" and pay["amount"] == 40_000, r.text
    r = s.fetch(tok, s.official + "/paid")
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded", r.text
    assert len(h.kept) == 2
    assert [s.settle(p, q)["errorReason"] for p, q in h.kept] == ["invalid_exact_evm_nonce_already_used"] * 2
    assert s.available(wal["id"]) == 1_000_000 - 80_000
    assert s.account("sys_revenue") == 80_000  # total taken <= the daily limit
    assert s.account(f"x402dev_{wal['evm_address'].lower()}") == 1_000_000


def test_host_rules_apply_to_broker_payments(hostile: tuple[Stack, Hostile]) -> None:
    """The payee is the URL's host as well as the payTo address: a blocked host
    is not paid, and a provider cap on the host holds whatever payTo it names."""
    s, h = hostile
    h.settle_first = True
    wal, tok = s.wallet({"blocked_payees": ["127.0.0.1."]})
    r = s.fetch(tok, s.official + "/paid")
    assert r.status_code == 402 and r.json()["error"]["code"] == "payee_blocked", r.text
    assert s.available(wal["id"]) == 1_000_000 and h.kept == []

    wal, tok = s.wallet({"provider_caps": {"127.0.0.1": 150_000}})
    r = s.fetch(tok, s.official + "/paid?pay_to=0x" + "a1" * 20)
    assert r.json()["payment"]["status"] == "paid", r.text
    r = s.fetch(tok, s.official + "/paid?pay_to=0x" + "b2" * 20)
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded", r.text
    assert s.available(wal["id"]) == 1_000_000 - 100_000


def test_a_revoked_token_fetches_nothing(hostile: tuple[Stack, Hostile]) -> None:
    s, h = hostile
    wal, tok = s.wallet()
    token_id = s.http.get(f"/admin/wallets/{wal['id']}/tokens", headers=ADMIN).json()["data"][0]["id"]
    assert s.http.post(f"/admin/agent-tokens/{token_id}/revoke", headers=ADMIN).status_code == 200
    for path in ("/paid", "/free"):
        r = s.fetch(tok, s.official + path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "token_revoked", r.text
    assert h.requests == 0


def test_a_payment_settled_elsewhere_stays_held_while_it_can_be_spent(hostile: tuple[Stack, Hostile]) -> None:
    """Paid in an asset tollway does not settle (USDC on Base), the broker cannot
    cancel a kept signature: its hold stays, counted against the daily limit,
    until the signature has expired (then the sweep voids it)."""
    s, h = hostile
    h.network, h.asset = BASE_USDC["network"], BASE_USDC["asset"]
    wal, tok = s.wallet({"spending_limits": [{"amount": "$0.15", "interval": "daily"}]})
    r = s.fetch(tok, s.official + "/paid")
    pay = r.json()["payment"]
    assert pay["status"] == "held" and pay["held"] == 100_000 and pay["amount"] == 0, r.text
    assert s.available(wal["id"]) == 1_000_000 - 100_000
    r = s.fetch(tok, s.official + "/paid")  # the held signature still counts against the limit
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded", r.text
    base, agent = f"/v1/wallet/authorizations/{pay['authorization_id']}", {"authorization": f"Bearer {tok}"}
    for path, body in (("/void", None), ("/capture", {"amount": 1})):  # nor may the agent free or shrink it
        r = s.http.post(base + path, json=body, headers=agent)
        assert r.status_code == 409 and r.json()["error"]["code"] == "authorization_signed", r.text
    auth = s.http.get(base, headers=agent).json()
    assert auth["status"] == "approved" and s.available(wal["id"]) == 1_000_000 - 100_000
    assert pay["valid_before"] * 1_000_000 < auth["expires_at_us"] <= (pay["valid_before"] + 61) * 1_000_000


def test_a_token_revoked_while_its_payment_is_decided_signs_nothing(
    hostile: tuple[Stack, Hostile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revoke lands after the authorization was approved but before the
    broker signs (its sweep of the token's holds ran first): nothing is signed
    or sent, and the hold is voided."""
    s, h = hostile
    wal, tok = s.wallet()
    rt = s.app.state.runtime
    approve = rt.authorizer.authorize

    async def then_revoke(*a: Any, **kw: Any) -> Any:
        d = await approve(*a, **kw)
        await rt.wallets.revoke(d.token_id)  # the token only: the hold is left for the broker
        return d

    monkeypatch.setattr(rt.authorizer, "authorize", then_revoke)
    r = s.fetch(tok, s.official + "/paid")
    assert r.status_code == 403 and r.json()["error"]["code"] == "token_revoked", r.text
    assert h.requests == 1 and h.kept == []  # the unpaid probe only
    assert s.available(wal["id"]) == 1_000_000
