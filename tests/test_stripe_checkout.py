"""Checkout Sessions and the customer portal, through tollway's API, against the stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from conftest import ADMIN
from stripe_standin import StripeStandIn
from stripe_support import App


async def test_checkout_opens_a_subscription_session_for_the_plans_prices(
    app: App, standin: StripeStandIn
) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "checkout_session"
    assert body["id"].startswith("cs_test_") and body["url"].startswith("https://checkout.stripe.com/")

    [call] = standin.calls("POST", "/v1/checkout/sessions")
    p = call.params
    prices = {x["lookup_key"]: x["id"] for x in standin.by_kind("price")}
    assert p["mode"] == "subscription"
    assert p["line_items"] == {
        "0": {"price": prices["pro"], "quantity": "1"},
        "1": {"price": prices["pro:neurons"]},
    }
    assert p["success_url"] == "https://app.example/billing/done"
    assert p["cancel_url"] == "https://app.example/billing/canceled"
    assert p["client_reference_id"] == ada.id
    assert p["subscription_data"]["metadata"] == {"tollway_customer": ada.id, "tollway_plan": "pro"}
    # The Stripe customer was made once and linked both ways.
    [cus] = standin.by_kind("customer")
    assert p["customer"] == cus["id"] == body["stripe_customer_id"]
    assert cus["metadata"] == {"tollway_customer": ada.id} and cus["email"] == "ada@example.com"
    sub = await app.rt.billing.subscriptions.get(ada.id)
    assert sub.stripe_customer_id == cus["id"] and sub.plan == "free"  # the plan changes when Stripe says so


async def test_concurrent_checkouts_make_one_stripe_customer(app: App, standin: StripeStandIn) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    rs = await asyncio.gather(
        *(app.http.post("/v1/billing/checkout", json={"plan": "team"}, headers=ada.auth) for _ in range(5))
    )
    assert [r.status_code for r in rs] == [200] * 5
    assert len(list(standin.by_kind("customer"))) == 1
    assert len({r.json()["stripe_customer_id"] for r in rs}) == 1
    # The sub-cent Team price goes in as it is; a trial-less plan sends no trial.
    call = standin.calls("POST", "/v1/checkout/sessions")[0]
    assert "trial_period_days" not in call.params["subscription_data"]


async def test_a_trial_plan_checks_out_with_its_trial(db_url: str, standin: StripeStandIn) -> None:
    from stripe_support import PLANS, stripe_settings
    from tollway.api.app import create_app
    from tollway.runtime import Runtime

    plans = [*PLANS[:1], {**PLANS[1], "trial_days": 14}, *PLANS[2:]]
    rt = Runtime.build(stripe_settings(db_url, plans))
    assert rt.stripe is not None
    try:
        await rt.stripe.sync()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(rt=rt)), base_url="http://t"
        ) as http:
            ada = await App(rt, http).customer()
            r = await http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
            assert r.status_code == 200, r.text
    finally:
        await rt.close()
    assert (
        standin.calls("POST", "/v1/checkout/sessions")[0].params["subscription_data"]["trial_period_days"]
        == "14"
    )


@pytest.mark.parametrize(
    ("plan", "status", "code"),
    [("free", 400, "plan_not_purchasable"), ("nope", 400, "plan_not_found"), ("", 400, "invalid_parameter")],
)
async def test_checkout_refuses_what_cannot_be_bought(
    app: App, standin: StripeStandIn, plan: str, status: int, code: str
) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    r = await app.http.post("/v1/billing/checkout", json={"plan": plan}, headers=ada.auth)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert standin.calls("POST", "/v1/checkout/sessions") == []


async def test_checkout_before_sync_says_to_sync(app: App, standin: StripeStandIn) -> None:
    ada = await app.customer()
    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "stripe_not_synced"
    assert "tollway stripe sync" in r.json()["error"]["message"]


async def test_checkout_needs_a_key_with_billing_write(app: App, standin: StripeStandIn) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    assert (await app.http.post("/v1/billing/checkout", json={"plan": "pro"})).status_code == 401
    r = await app.http.post(
        "/admin/keys", json={"customer_id": ada.id, "scopes": ["billing:read"]}, headers=ADMIN
    )
    weak = {"Authorization": f"Bearer {r.json()['key']}"}
    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=weak)
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"


async def test_a_live_stripe_subscription_goes_to_the_portal_not_checkout(
    app: App, standin: StripeStandIn
) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    r = await app.http.post("/v1/billing/portal", headers=ada.auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_stripe_customer"

    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
    for ev in standin.complete_checkout(r.json()["id"]):
        assert (await app.deliver(ev)).status_code == 200
    r = await app.http.post("/v1/billing/checkout", json={"plan": "team"}, headers=ada.auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "subscription_exists"

    r = await app.http.post("/v1/billing/portal", headers=ada.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "billing_portal_session" and body["url"].startswith(
        "https://billing.stripe.com/"
    )
    [call] = standin.calls("POST", "/v1/billing_portal/sessions")
    cus = (await app.rt.billing.subscriptions.get(ada.id)).stripe_customer_id
    assert call.params == {"customer": cus, "return_url": "https://app.example/billing/done"}


async def test_stripe_down_is_a_502_and_nothing_is_recorded(app: App, standin: StripeStandIn) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    standin.fail(503)
    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
    assert r.status_code == 502 and r.json()["error"]["code"] == "stripe_error"
    assert (await app.rt.billing.subscriptions.get(ada.id)).stripe_customer_id is None
    standin.heal()
    r = await app.http.post("/v1/billing/checkout", json={"plan": "pro"}, headers=ada.auth)
    assert r.status_code == 200


async def test_without_stripe_the_routes_say_it_is_not_configured(client: httpx.AsyncClient) -> None:
    """STRIPE_API_KEY unset: tollway runs, and the Stripe routes answer 409 in the one error shape."""
    c = (await client.post("/admin/customers", json={"name": "Bo"}, headers=ADMIN)).json()
    key = (await client.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN)).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/billing/checkout", {"json": {"plan": "pro"}, "headers": auth}),
        ("/v1/billing/portal", {"headers": auth}),
        ("/stripe/webhook", {"content": b"{}", "headers": {"Stripe-Signature": "t=1,v1=00"}}),
    ]
    for path, kw in calls:
        r = await client.post(path, **kw)
        assert r.status_code == 409, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "stripe_not_configured" and "STRIPE_API_KEY" in err["message"]
