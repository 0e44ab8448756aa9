"""Agent wallets: policies, delegated tokens, authorizations with ledger
holds, capture and void, approvals, the runaway-loop guard and the audit
trail, over HTTP on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import ADMIN, settings_for
from tollway.api.app import create_app
from tollway.runtime import Runtime


class W:
    def __init__(self, rt: Runtime, http: httpx.AsyncClient) -> None:
        self.rt, self.http = rt, http

    async def wallet(self, policy: dict[str, Any] | None = None, fund: int = 50_000_000) -> dict[str, Any]:
        c = (await self.http.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN)).json()
        await self.rt.ledger.transfer("sys_funding", c["account_id"], fund)
        r = await self.http.post(
            "/admin/wallets", json={"customer_id": c["id"], "policy": policy or {}}, headers=ADMIN
        )
        assert r.status_code == 201, r.text
        w: dict[str, Any] = r.json()
        r = await self.http.post(f"/admin/wallets/{w['id']}/topup", json={"amount": fund}, headers=ADMIN)
        assert r.status_code == 200, r.text
        return w

    async def token(self, wallet_id: str, **limits: Any) -> str:
        r = await self.http.post(f"/admin/wallets/{wallet_id}/tokens", json={"limits": limits}, headers=ADMIN)
        assert r.status_code == 201, r.text
        secret: str = r.json()["token"]
        return secret

    async def authorize(self, token: str, amount: Any = 1_000_000, **over: Any) -> httpx.Response:
        body = {
            "amount": amount,
            "payee": "api.example.com",
            "category": "api_access",
            "idempotency_key": None,
        }
        body.update(over)
        if body["idempotency_key"] is None:
            body["idempotency_key"] = f"k{id(body)}-{asyncio.get_running_loop().time()}"
        return await self.http.post(
            "/v1/wallet/authorize", json=body, headers={"authorization": f"Bearer {token}"}
        )

    async def capture(self, token: str, auth_id: str, amount: Any = None) -> httpx.Response:
        return await self.http.post(
            f"/v1/wallet/authorizations/{auth_id}/capture",
            json={"amount": amount},
            headers={"authorization": f"Bearer {token}"},
        )

    async def available(self, wallet_id: str) -> int:
        r = await self.http.get(f"/admin/wallets/{wallet_id}", headers=ADMIN)
        out: int = r.json()["available"]
        return out


@pytest.fixture
async def w(db_url: str) -> AsyncIterator[W]:
    rt = Runtime.build(settings_for(db_url))
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield W(rt, http)
    await rt.close()


async def test_approve_hold_capture_part_and_release_the_rest(w: W) -> None:
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    r = await w.authorize(tok, 2_000_000)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["status"] == "approved" and a["held"] == 2_000_000
    assert await w.available(wal["id"]) == 48_000_000
    r = await w.capture(tok, a["id"], 1_500_000)
    assert r.status_code == 200 and r.json()["status"] == "captured" and r.json()["captured"] == 1_500_000
    assert await w.available(wal["id"]) == 48_500_000
    assert (await w.capture(tok, a["id"])).json()["error"]["code"] == "authorization_not_open"
    audit = (await w.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN)).json()["data"]
    assert [e["event"] for e in audit][:2] == ["capture", "authorization"]


async def test_the_same_idempotency_key_returns_the_same_decision(w: W) -> None:
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    a, b = await asyncio.gather(
        w.authorize(tok, 1_000, idempotency_key="same"), w.authorize(tok, 1_000, idempotency_key="same")
    )
    assert a.status_code == b.status_code == 200 and a.json()["id"] == b.json()["id"]
    assert await w.available(wal["id"]) == 50_000_000 - 1_000
    r = await w.authorize(tok, 2_000, idempotency_key="same")
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"


@pytest.mark.parametrize(
    ("policy", "limits", "over", "reason"),
    [
        (
            {"spending_limits": [{"amount": "$1", "interval": "daily"}]},
            {},
            {"amount": 1_000_001},
            "spending_limit_exceeded",
        ),
        (
            {"spending_limits": [{"amount": 5, "interval": "per_authorization"}]},
            {},
            {"amount": 6},
            "spending_limit_exceeded",
        ),
        ({}, {"max_per_payment": 10}, {"amount": 11}, "spending_limit_exceeded"),
        ({"blocked_categories": ["domains"]}, {}, {"category": "domains"}, "category_blocked"),
        ({"allowed_categories": ["ai_inference"]}, {}, {}, "category_blocked"),
        ({}, {"categories": ["dns"]}, {}, "category_blocked"),
        ({"blocked_payees": ["https://API.example.com/x"]}, {}, {}, "payee_blocked"),
        ({"allowed_payees": ["0x" + "ab" * 20]}, {}, {}, "payee_blocked"),
        ({"provider_cap": "$0.5"}, {}, {}, "spending_limit_exceeded"),
        ({}, {"total_allowance": 999}, {}, "spending_limit_exceeded"),
        ({}, {}, {"amount": 60_000_000}, "insufficient_funds"),
    ],
)
async def test_declines_name_the_reason_and_hold_nothing(
    w: W, policy: dict[str, Any], limits: dict[str, Any], over: dict[str, Any], reason: str
) -> None:
    wal = await w.wallet(policy)
    tok = await w.token(wal["id"], **limits)
    before = await w.rt.ledger.accounts()
    r = await w.authorize(tok, **over)
    assert r.status_code == 402, r.text
    body = r.json()
    assert body["error"]["code"] == reason and body["authorization"]["status"] == "declined"
    assert body["authorization"]["reason"] == reason
    after = {a.id: a for a in await w.rt.ledger.accounts()}
    assert all(a.debits_pending == 0 for a in after.values())
    for a in before:  # funding the limits' accounts on first use moves no one's money
        if a.kind != "funding":
            assert after[a.id].balance == a.balance, a


async def test_expired_revoked_and_single_use_tokens(w: W) -> None:
    wal = await w.wallet()
    now = w.rt.clock.now_us()
    r = await w.http.post(
        f"/admin/wallets/{wal['id']}/tokens", json={"limits": {"expires_at_us": now - 1}}, headers=ADMIN
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_limits"
    tok = await w.token(wal["id"], single_use=True)
    results = await asyncio.gather(*[w.authorize(tok, 100) for _ in range(5)])
    assert sorted(r.status_code for r in results) == [200, 402, 402, 402, 402]
    assert {r.json()["error"]["code"] for r in results if r.status_code == 402} == {"token_expired"}
    tok2 = await w.token(wal["id"])
    tid = (await w.http.get(f"/admin/wallets/{wal['id']}/tokens", headers=ADMIN)).json()["data"][-1]["id"]
    assert (await w.http.post(f"/admin/agent-tokens/{tid}/revoke", headers=ADMIN)).status_code == 200
    r = await w.authorize(tok2)
    assert r.status_code == 402 and r.json()["error"]["code"] == "token_revoked"


async def test_bad_input_gets_a_clear_error_and_holds_nothing(w: W) -> None:
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    for token, over, status, code in (
        ("tw_agt_nope", {}, 401, "invalid_agent_token"),
        ("tw_agt_" + "a" * 12 + "_" + "b" * 32, {}, 401, "invalid_agent_token"),
        (tok, {"amount": 0}, 400, "invalid_amount"),
        (tok, {"amount": -5}, 400, "invalid_amount"),
        (tok, {"amount": 1.5}, 400, "invalid_amount"),
        (tok, {"amount": "5"}, 400, "invalid_amount"),
        (tok, {"currency": "eur"}, 400, "currency_mismatch"),
        (tok, {"category": "gambling"}, 400, "invalid_category"),
        (tok, {"payee": ""}, 400, "invalid_payee"),
        (tok, {"idempotency_key": ""}, 400, "invalid_idempotency_key"),
    ):
        r = await w.authorize(token, **over)
        assert r.status_code == status and r.json()["error"]["code"] == code, (over, r.text)
    assert await w.available(wal["id"]) == 50_000_000
    r = await w.http.post("/admin/wallets/wal_nope/topup", json={"amount": 5}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "wallet_not_found"
    r = await w.http.post("/admin/wallets/wal_nope/tokens", json={}, headers=ADMIN)
    assert r.status_code == 404
    bad = {"spending_limits": [{"amount": "$1", "interval": "hourly"}]}
    r = await w.http.put(f"/admin/wallets/{wal['id']}/policy", json={"policy": bad}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_policy"


async def test_approval_queue_approve_deny_and_timeout(w: W) -> None:
    wal = await w.wallet({"approval_threshold": "$1", "approval_timeout_seconds": 10})
    tok = await w.token(wal["id"])
    r = await w.authorize(tok, 5_000_000)
    assert r.status_code == 202 and r.json()["status"] == "pending_approval"
    first = r.json()["id"]
    second = (await w.authorize(tok, 2_000_000)).json()["id"]
    assert await w.available(wal["id"]) == 50_000_000  # nothing held while waiting
    queue = (await w.http.get("/admin/approvals", headers=ADMIN)).json()["data"]
    assert [a["id"] for a in queue] == [first, second]
    r = await w.http.post(
        f"/admin/approvals/{first}/approve", json={"actor": "ada@example.com"}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert await w.available(wal["id"]) == 45_000_000
    r = await w.http.post(f"/admin/approvals/{second}/deny", json={}, headers=ADMIN)
    assert r.json()["status"] == "declined" and r.json()["reason"] == "approval_required"
    third = (await w.authorize(tok, 3_000_000)).json()["id"]
    from tollway.core.schema import wallet_authorizations as A
    from tollway.core.storage import writer

    async with writer(w.rt.engine).begin() as conn:  # let it wait past its timeout
        await conn.execute(A.update().where(A.c.id == third).values(expires_at_us=1))
    assert await w.rt.authorizer.sweep() >= 1
    t = (
        await w.http.get(f"/v1/wallet/authorizations/{third}", headers={"authorization": f"Bearer {tok}"})
    ).json()
    assert (t["status"], t["reason"]) == ("declined", "approval_required")
    audit = (await w.http.get(f"/admin/wallets/{wal['id']}/audit", headers=ADMIN)).json()["data"]
    assert {"approved", "declined"} <= {e["event"] for e in audit}
    assert any(e["actor"] == "ada@example.com" for e in audit)


async def test_runaway_loop_freezes_the_token_until_a_human_unfreezes_it(w: W) -> None:
    wal = await w.wallet({"velocity": {"max_payments_per_payee_per_minute": 3}})
    tok = await w.token(wal["id"])
    codes = [(await w.authorize(tok, 10)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 402, 402]
    r = await w.authorize(tok, 10, payee="other.example.com")  # frozen for every payee now
    assert r.json()["error"]["code"] == "velocity_limit"
    t = (await w.http.get(f"/admin/wallets/{wal['id']}/tokens", headers=ADMIN)).json()["data"][0]
    assert t["frozen"] and "payments to api.example.com" in t["frozen_reason"]
    r = await w.http.post(f"/admin/agent-tokens/{t['id']}/unfreeze", json={"actor": "ada"}, headers=ADMIN)
    assert r.status_code == 200 and not r.json()["frozen"]
    assert (await w.authorize(tok, 10, payee="other.example.com")).status_code == 200


async def test_a_daily_limit_holds_under_200_concurrent_authorizations(w: W) -> None:
    wal = await w.wallet({"spending_limits": [{"amount": "$10", "interval": "daily"}]})
    tok = await w.token(wal["id"])
    results = await asyncio.gather(*[w.authorize(tok, 300_000) for _ in range(200)])
    approved = [r.json() for r in results if r.status_code == 200]
    assert len(approved) == 33  # 33 x $0.30 = $9.90; a 34th would pass $10
    captures = await asyncio.gather(*[w.capture(tok, a["id"]) for a in approved])
    assert all(c.status_code == 200 for c in captures)
    assert await w.available(wal["id"]) == 50_000_000 - 9_900_000


async def test_a_frozen_token_is_reported_to_the_alert_webhook(db_url: str) -> None:
    """``[wallets] alert_webhook_url``: a webhook for ``token_frozen`` alerts (docs/observability.md)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from threaded import ThreadServer

    got: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        got.append(await request.json())
        return Response(status_code=204)

    with ThreadServer(Starlette(routes=[Route("/alerts", hook, methods=["POST"])])) as srv:
        rt = Runtime.build(
            settings_for(
                db_url,
                wallets={"alert_webhook_url": srv.url + "/alerts"},
                alerts={"allow": ["127.0.0.1/32"]},  # the webhook is on this machine
            )
        )
        app = create_app(rt=rt)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            w = W(rt, http)
            wal = await w.wallet({"velocity": {"max_spend_per_minute": 25}})
            tok = await w.token(wal["id"])
            assert (await w.authorize(tok, 20)).status_code == 200
            r = await w.authorize(tok, 20)
            assert r.status_code == 402 and r.json()["error"]["code"] == "velocity_limit"
            for _ in range(100):  # the server's loops: alerts become deliveries, the scheduler posts them
                await rt.alert_delivery.fan_out()
                await rt.scheduler.run_due()
                if got:
                    break
                await asyncio.sleep(0.02)
        await rt.close()
    assert len(got) == 1 and got[0]["kind"] == "token_frozen"
    event = got[0]["payload"]
    assert event["type"] == "wallet.token_frozen" and event["wallet_id"] == wal["id"]
    assert "faster than 25" in event["reason"]


async def test_a_limit_raised_mid_period_applies_to_the_next_authorization(w: W) -> None:
    """The limit accounts are remembered per policy: a new policy is seen at once."""
    wal = await w.wallet({"spending_limits": [{"amount": "$3", "interval": "daily"}]})
    tok = await w.token(wal["id"])

    async def outcome(amount: int) -> str:
        r = await w.authorize(tok, amount)
        return str(r.json()["status"]) if r.status_code == 200 else str(r.json()["error"]["code"])

    assert await outcome(3_000_000) == "approved"
    assert await outcome(1_000_000) == "spending_limit_exceeded"
    await w.rt.wallets.set_policy(wal["id"], {"spending_limits": [{"amount": "$5", "interval": "daily"}]})
    assert await outcome(1_000_000) == "approved"
    assert await outcome(1_500_000) == "spending_limit_exceeded"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("API.Vendor.com.", "api.vendor.com"),
        ("api.vendor.com:443", "api.vendor.com"),
        ("https://API.vendor.COM.:443/v1/x?y=1", "api.vendor.com"),
        ("http://user@api.vendor.com:80", "api.vendor.com"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example.", "xn--bcher-kva.example"),
        ("bücher。example", "xn--bcher-kva.example"),  # an ideographic full stop
        ("[::1]:8080", "::1"),
        ("0xAbC0000000000000000000000000000000000001", "0xabc0000000000000000000000000000000000001"),
    ],
)
def test_every_spelling_of_a_payee_is_one_payee(spelling: str, canonical: str) -> None:
    from tollway.wallets.policy import normalize_payee

    assert normalize_payee(spelling) == canonical


@pytest.mark.parametrize("spelling", ["API.Vendor.com.", "api.vendor.com:443", "xn--bcher-kva.example"])
async def test_a_respelled_payee_escapes_no_payee_rule(w: W, spelling: str) -> None:
    """Blocked payees, the provider cap and the per-payee velocity limit all
    compare one spelling: a trailing dot, a port, case or IDNA changes nothing."""
    listed = "bücher.example" if spelling.startswith("xn--") else "api.vendor.com"
    wal = await w.wallet({"blocked_payees": [listed]})
    r = await w.authorize(await w.token(wal["id"]), 10, payee=spelling)
    assert r.status_code == 402 and r.json()["error"]["code"] == "payee_blocked", r.text

    wal = await w.wallet({"provider_caps": {listed: 1500}})
    tok = await w.token(wal["id"])
    assert (await w.authorize(tok, 1000, payee=listed)).status_code == 200
    r = await w.authorize(tok, 1000, payee=spelling)
    assert r.status_code == 402 and r.json()["error"]["code"] == "spending_limit_exceeded", r.text

    wal = await w.wallet({"velocity": {"max_payments_per_payee_per_minute": 1}})
    tok = await w.token(wal["id"])
    assert (await w.authorize(tok, 10, payee=listed)).status_code == 200
    r = await w.authorize(tok, 10, payee=spelling)
    assert r.status_code == 402 and r.json()["error"]["code"] == "velocity_limit", r.text


async def test_revoking_a_token_voids_its_holds_and_nothing_is_captured(w: W) -> None:
    """The kill switch: holds made before the revoke are voided at once (the
    balance is whole again) and the token's capture is refused."""
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    held = [(await w.authorize(tok, 2_000_000)).json()["id"] for _ in range(2)]
    assert await w.available(wal["id"]) == 50_000_000 - 4_000_000
    token_id = (await w.http.get(f"/admin/wallets/{wal['id']}/tokens", headers=ADMIN)).json()["data"][0]["id"]
    r = await w.http.post(f"/admin/agent-tokens/{token_id}/revoke", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"]
    assert await w.available(wal["id"]) == 50_000_000
    for auth_id in held:
        r = await w.capture(tok, auth_id)
        assert r.status_code in (403, 409) and r.json()["error"]["code"] in (
            "token_revoked",
            "authorization_not_open",
        )
        d = await w.rt.authorizer.get(auth_id)
        assert d.status == "voided" and d.captured == 0
    wallet = await w.rt.wallets.get(wal["id"])
    assert await w.rt.wallets.balance(wallet) == (50_000_000, 50_000_000)


async def test_a_frozen_token_cannot_capture_what_it_holds(w: W) -> None:
    wal = await w.wallet()
    tok = await w.token(wal["id"])
    auth_id = (await w.authorize(tok, 1000)).json()["id"]
    token_id = (await w.http.get(f"/admin/wallets/{wal['id']}/tokens", headers=ADMIN)).json()["data"][0]["id"]
    await w.rt.wallets.freeze(token_id, "test")
    r = await w.capture(tok, auth_id)
    assert r.status_code == 403 and r.json()["error"]["code"] == "token_frozen", r.text
    assert (await w.rt.authorizer.get(auth_id)).status == "approved"  # a human may unfreeze it
    await w.rt.wallets.unfreeze(token_id)
    assert (await w.capture(tok, auth_id)).status_code == 200


@pytest.mark.parametrize("race", ["capture_void_half", "two_whole_captures"])
async def test_racing_resolutions_resolve_once_and_the_record_matches_the_ledger(w: W, race: str) -> None:
    """Resolutions of one authorization at once in one process (each passes the
    open check before the others claim it): exactly one wins, the others are 409
    ``authorization_not_open``, and the record says what the ledger took. A void
    beside a capture once had the capture recorded over the void's release; two
    identical captures, one after the other had finished, were both 200 (the
    second's ledger post replayed the first's under the same key)."""
    for _ in range(6):
        wal = await w.wallet()
        tok = await w.token(wal["id"])
        a = (await w.authorize(tok, 1_000)).json()
        assert a["status"] == "approved", a
        auth = {"authorization": f"Bearer {tok}"}
        if race == "capture_void_half":
            void = w.http.post(f"/v1/wallet/authorizations/{a['id']}/void", headers=auth)
            rs = await asyncio.gather(w.capture(tok, a["id"]), void, w.capture(tok, a["id"], 500))
        else:
            rs = await asyncio.gather(w.capture(tok, a["id"]), w.capture(tok, a["id"]))
        won = [r for r in rs if r.status_code == 200]
        assert len(won) == 1, [r.text for r in rs]
        assert all(
            r.json()["error"]["code"] == "authorization_not_open" for r in rs if r.status_code != 200
        ), [r.text for r in rs]
        row = (await w.http.get(f"/v1/wallet/authorizations/{a['id']}", headers=auth)).json()
        taken = 50_000_000 - await w.available(wal["id"])
        assert row["status"] == won[0].json()["status"]
        assert row["captured"] == taken == won[0].json()["captured"]
