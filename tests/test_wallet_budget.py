# ruff: noqa: F811
"""Budget requests: an agent asks (with a bootstrap credential or its token),
the owner approves (possibly editing the caps) or denies, and the delegated
token is issued once. The attacks: other wallets, replays, expiry, revoked
credentials, a bootstrap on spending routes, concurrent reads."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from conftest import ADMIN, err
from test_wallets import W, w  # noqa: F401  (the fixture `w`: the tests take it as an argument)


def _auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def _bootstrap(w: W, wallet_id: str, **body: Any) -> str:
    r = await w.http.post(f"/admin/wallets/{wallet_id}/bootstrap", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["credential"].startswith("tw_boot_")
    secret: str = r.json()["credential"]
    return secret


async def _ask(w: W, secret: str, **over: Any) -> httpx.Response:
    body = {"amount": "$2", "period": "daily", "categories": ["api_access"], "purpose": "scrape prices"}
    body.update(over)
    return await w.http.post("/v1/wallet/budget-requests", json=body, headers=_auth(secret))


async def _poll(w: W, secret: str, rid: str) -> httpx.Response:
    return await w.http.get(f"/v1/wallet/budget-requests/{rid}", headers=_auth(secret))


async def _approve(w: W, rid: str, **body: Any) -> httpx.Response:
    return await w.http.post(f"/admin/wallets/budget-requests/{rid}/approve", json=body, headers=ADMIN)


async def test_ask_approve_and_the_token_is_issued_once_with_exactly_the_caps(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    r = await _ask(w, boot, payees=["api.example.com"])
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "pending" and req["expires_at_us"] > req["created_at_us"]
    assert (await _poll(w, boot, req["id"])).json()["status"] == "pending"
    listed = (await w.http.get("/admin/wallets/budget-requests?status=pending", headers=ADMIN)).json()
    assert [x["id"] for x in listed["data"]] == [req["id"]]
    r = await _approve(w, req["id"])
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    first = (await _poll(w, boot, req["id"])).json()
    assert first["status"] == "issued" and first["token"].startswith("tw_agt_")
    assert first["agent_token"]["limits"]["spending_limits"] == [
        {"amount": 2_000_000, "interval": "daily", "categories": None}
    ]
    again = (await _poll(w, boot, req["id"])).json()
    assert again["status"] == "issued" and "token" not in again and again["token_id"] == first["token_id"]
    tok = first["token"]
    # exactly the caps: the daily amount, the category, the payee
    assert (await w.authorize(tok, 1_500_000)).status_code == 200
    r = await w.authorize(tok, 600_000)
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded"
    r = await w.authorize(tok, 1_000, category="hosting")
    assert r.json()["error"]["code"] == "category_blocked"
    r = await w.authorize(tok, 1_000, payee="other.example.com")
    assert r.json()["error"]["code"] == "payee_blocked"
    events = [
        e["event"]
        for e in (await w.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN)).json()["data"]
    ]
    for e in ("bootstrap_created", "budget_requested", "budget_approved", "token_granted"):
        assert e in events


async def test_the_owner_edits_the_caps_and_denies_with_a_reason(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    rid = (await _ask(w, boot, amount="$50", period="all_time")).json()["id"]
    r = await _approve(w, rid, caps={"amount": "$1", "period": "all_time", "categories": ["api_access"]})
    assert r.json()["approved_caps"]["amount"] == 1_000_000 and r.json()["caps"]["amount"] == 50_000_000
    tok = (await _poll(w, boot, rid)).json()["token"]
    assert (await w.authorize(tok, 1_000_000)).status_code == 200
    assert (await w.authorize(tok, 1)).json()["error"]["code"] == "spending_limit_exceeded"
    rid2 = (await _ask(w, boot)).json()["id"]
    deny = f"/admin/wallets/budget-requests/{rid2}/deny"
    err(await w.http.post(deny, json={"reason": ""}, headers=ADMIN), 400, "invalid_reason", "reason")
    r = await w.http.post(deny, json={"reason": "too much"}, headers=ADMIN)
    assert r.json()["status"] == "denied" and r.json()["reason"] == "too much"
    p = (await _poll(w, boot, rid2)).json()
    assert p["status"] == "denied" and "token" not in p
    err(await _approve(w, rid2), 409, "budget_request_not_pending")


async def test_replayed_and_concurrent_approvals_issue_one_token(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    rid = (await _ask(w, boot)).json()["id"]
    rs = await asyncio.gather(*(_approve(w, rid) for _ in range(4)))
    assert sorted(r.status_code for r in rs) == [200, 409, 409, 409]
    err(await _approve(w, rid), 409, "budget_request_not_pending")
    polls = await asyncio.gather(*(_poll(w, boot, rid) for _ in range(6)))
    assert all(p.status_code == 200 for p in polls)
    assert sum("token" in p.json() for p in polls) == 1
    assert len(await w.rt.wallets.tokens(wal["id"])) == 1


async def test_an_expired_request_cannot_be_approved(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    rid = (await _ask(w, boot)).json()["id"]
    w.rt.budget_requests.ttl_s = 0  # the next request expires at once
    rid2 = (await _ask(w, boot)).json()["id"]
    err(await _approve(w, rid2), 409, "budget_request_expired")
    assert (await _poll(w, boot, rid2)).json()["status"] == "expired"
    err(await _approve(w, rid2), 409, "budget_request_expired")
    assert (await _approve(w, rid)).status_code == 200  # the first one still waits
    events = [
        e["event"]
        for e in (await w.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN)).json()["data"]
    ]
    assert "budget_expired" in events


async def test_a_bootstrap_is_bound_to_its_wallet(w: W) -> None:
    a, b = await w.wallet(), await w.wallet()
    boot_a = await _bootstrap(w, a["id"])
    tok_b = await w.token(b["id"])
    tid_b = (await w.rt.wallets.verify(tok_b))[0].id
    # a raise of wallet B's token with wallet A's credential: as if no such token
    err(await _ask(w, boot_a, raise_of=tid_b), 404, "agent_token_not_found", "raise_of")
    rid = (await _ask(w, boot_a)).json()["id"]
    assert (await w.rt.budget_requests.get(rid))["wallet_id"] == a["id"]
    # wallet B's agent cannot read (or collect) wallet A's request
    boot_b = await _bootstrap(w, b["id"])
    err(await _poll(w, tok_b, rid), 404, "budget_request_not_found")
    err(await _poll(w, boot_b, rid), 404, "budget_request_not_found")
    # nor can another credential of the same wallet collect its token
    other_a = await _bootstrap(w, a["id"])
    await _approve(w, rid)
    err(await _poll(w, other_a, rid), 404, "budget_request_not_found")
    assert "token" in (await _poll(w, boot_a, rid)).json()


async def test_a_revoked_or_expired_bootstrap_can_do_nothing(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    rid = (await _ask(w, boot)).json()["id"]
    await _approve(w, rid)
    bid = (await w.http.get(f"/admin/wallets/{wal['id']}/bootstraps", headers=ADMIN)).json()["data"][0]["id"]
    r = await w.http.post(f"/admin/wallet-bootstraps/{bid}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"] is True
    err(await _poll(w, boot, rid), 403, "bootstrap_revoked")  # the approved token is not handed out
    err(await _ask(w, boot), 403, "bootstrap_revoked")
    assert await w.rt.wallets.tokens(wal["id"]) == []
    short = await _bootstrap(w, wal["id"], expires_in_seconds=60)
    w.rt.bootstraps.clock = _Later(w.rt.clock, 61)
    err(await _ask(w, short), 403, "bootstrap_expired")
    err(await _ask(w, "tw_boot_aaaaaaaaaaaa_" + "b" * 32), 401, "invalid_bootstrap_credential")


class _Later:
    def __init__(self, clock: Any, seconds: int) -> None:
        self.clock, self.us = clock, seconds * 1_000_000

    def now_us(self) -> int:
        return int(self.clock.now_us()) + self.us


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/wallet", None),
        (
            "POST",
            "/v1/wallet/authorize",
            {"amount": 1, "payee": "a.example", "category": "api_access", "idempotency_key": "k"},
        ),
        ("POST", "/v1/broker/fetch", {"url": "https://example.com/"}),
        ("GET", "/v1/wallet/pnl", None),
        ("POST", "/v1/broker/provision/domains", {"domain": "x.example"}),
    ],
)
async def test_a_bootstrap_cannot_spend(w: W, method: str, path: str, body: Any) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    r = await w.http.request(method, path, json=body, headers=_auth(boot))
    assert r.status_code in (401, 403), r.text
    assert r.json()["error"]["code"] in ("invalid_agent_token", "missing_agent_token")
    assert await w.available(wal["id"]) == 50_000_000


async def test_a_raise_issues_new_caps_and_revokes_the_old_token(w: W) -> None:
    wal = await w.wallet()
    old = await w.token(wal["id"], max_per_payment=1_000)
    old_id = (await w.rt.wallets.verify(old))[0].id
    held = (await w.authorize(old, 1_000)).json()
    r = await _ask(w, old, amount="$5", period="monthly", categories=None, raise_of=old_id)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert (await w.authorize(old, 2_000)).json()["error"][
        "code"
    ] == "spending_limit_exceeded"  # nothing widened
    await _approve(w, rid)
    assert (await w.authorize(old, 2_000)).json()["error"][
        "code"
    ] == "spending_limit_exceeded"  # not yet issued
    new = (await _poll(w, old, rid)).json()["token"]
    assert (await w.authorize(new, 2_000)).status_code == 200
    r = await w.authorize(old, 10)
    assert r.json()["error"]["code"] == "token_revoked"
    assert (await w.rt.authorizer.get(held["id"])).status == "voided"  # the old token's hold is released
    # a revoked token can ask for nothing
    err(await _ask(w, old), 403, "token_revoked")
    # an agent token raises only itself: not a sibling's caps (issuing would revoke the sibling)
    sibling = await w.token(wal["id"])
    sib_id = (await w.rt.wallets.verify(sibling))[0].id
    err(await _ask(w, new, raise_of=sib_id), 403, "raise_of_other_token")


async def test_bad_requests_are_400_and_change_nothing(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    err(await _ask(w, boot, amount=0), 400, "invalid_caps")
    err(await _ask(w, boot, period="hourly"), 400, "invalid_caps")
    err(await _ask(w, boot, categories=["nope"]), 400, "invalid_caps")
    err(await _ask(w, boot, purpose=""), 400, "invalid_purpose", "purpose")
    err(await _ask(w, boot, raise_of=5), 400, "invalid_raise_of", "raise_of")
    err(await w.http.get("/admin/wallets/budget-requests?status=weird", headers=ADMIN), 400, "invalid_status")
    err(
        await w.http.post("/v1/wallet/budget-requests", json={"amount": 1, "purpose": "x"}),
        401,
        "missing_credential",
    )
    assert (await w.http.get("/admin/wallets/budget-requests", headers=ADMIN)).json()["data"] == []
    rid = (await _ask(w, boot)).json()["id"]
    err(await _approve(w, rid, caps={"amount": "$1", "expires_at_us": 1}), 400, "invalid_limits")
    assert (await w.rt.budget_requests.get(rid))["status"] == "pending"


async def test_a_forged_secret_and_a_flood_of_requests_are_refused(w: W) -> None:
    wal = await w.wallet()
    boot = await _bootstrap(w, wal["id"])
    forged = boot[: -len("x" * 32)] + "a" * 32  # the right prefix, another secret
    err(await _ask(w, forged), 401, "invalid_bootstrap_credential")
    for _ in range(20):
        assert (await _ask(w, boot)).status_code == 201
    err(await _ask(w, boot), 409, "too_many_budget_requests")
    assert len((await w.http.get("/admin/wallets/budget-requests", headers=ADMIN)).json()["data"]) == 20
