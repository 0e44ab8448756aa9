"""``POST /stripe/webhook``: signed with the SDK's own helper, verified, each
event processed once, objects re-fetched (so order does not matter)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from stripe_standin import StripeStandIn
from stripe_support import WEBHOOK_SECRET, App, Customer, signed
from tollway.core.schema import stripe_events as E


async def subscribed(
    app: App, standin: StripeStandIn, plan: str = "pro"
) -> tuple[Customer, list[dict[str, Any]]]:
    """A customer who went through Checkout: the events Stripe sends (not yet delivered)."""
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    ada = await app.customer()
    r = await app.http.post("/v1/billing/checkout", json={"plan": plan}, headers=ada.auth)
    assert r.status_code == 200, r.text
    return ada, standin.complete_checkout(r.json()["id"])


async def events_seen(app: App) -> dict[str, tuple[str, str]]:
    async with app.rt.engine.connect() as conn:
        return {i: (t, o) for i, t, o in await conn.execute(select(E.c.id, E.c.type, E.c.outcome))}


async def test_checkout_completed_subscribes_the_customer(app: App, standin: StripeStandIn) -> None:
    ada, events = await subscribed(app, standin)
    r = await app.deliver(events[0])  # checkout.session.completed
    assert r.status_code == 200, r.text
    assert r.json()["received"] is True and r.json()["duplicate"] is False
    sub = await app.rt.billing.subscriptions.get(ada.id)
    stripe_sub = events[1]["data"]["object"]
    item = stripe_sub["items"]["data"][0]
    assert (sub.plan, sub.status) == ("pro", "active")
    assert sub.stripe_subscription_id == stripe_sub["id"]
    assert sub.period_start_us == item["current_period_start"] * 1_000_000
    assert sub.period_end_us == item["current_period_end"] * 1_000_000
    # The plan applies at once: the customer's entitlements are Pro's.
    r = await app.http.get("/v1/entitlements", headers=ada.auth)
    assert r.json()["plan"] == "pro" and "support.email" in r.json()["features"]
    # The rest of the flow changes nothing more.
    for ev in events[1:]:
        assert (await app.deliver(ev)).status_code == 200
    assert (await app.rt.billing.subscriptions.get(ada.id)).plan == "pro"
    assert len(await events_seen(app)) == 3


async def test_a_duplicate_event_is_200_and_processed_once(app: App, standin: StripeStandIn) -> None:
    _, events = await subscribed(app, standin)
    first = await app.deliver(events[1])
    fetches = len(standin.calls("GET", "/v1/subscriptions/{id}"))
    again = await app.deliver(events[1])
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["outcome"] == first.json()["outcome"]
    assert len(standin.calls("GET", "/v1/subscriptions/{id}")) == fetches  # not processed again


async def test_concurrent_deliveries_of_one_event_process_it_once(app: App, standin: StripeStandIn) -> None:
    _, events = await subscribed(app, standin)
    rs = await asyncio.gather(*(app.deliver(events[1]) for _ in range(8)))
    assert [r.status_code for r in rs] == [200] * 8
    assert sorted(r.json()["duplicate"] for r in rs) == [False] + [True] * 7
    assert len(standin.calls("GET", "/v1/subscriptions/{id}")) == 1
    async with app.rt.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(E))).scalar_one() == 1


@pytest.mark.parametrize(
    "tamper",
    ["forged", "missing", "stale", "other_secret", "garbled_header", "body_changed"],
)
async def test_a_bad_signature_is_400_and_changes_nothing(
    app: App, standin: StripeStandIn, tamper: str
) -> None:
    ada, events = await subscribed(app, standin)
    payload, headers = signed(events[0])
    if tamper == "forged":
        t = int(time.time())
        headers["Stripe-Signature"] = f"t={t},v1={'0' * 64}"
    elif tamper == "missing":
        del headers["Stripe-Signature"]
    elif tamper == "stale":  # signed correctly, 301 s ago
        payload, headers = signed(events[0], timestamp=int(time.time()) - 301)
    elif tamper == "other_secret":
        payload, headers = signed(events[0], secret="whsec_someone_else")
    elif tamper == "garbled_header":
        headers["Stripe-Signature"] = "nonsense"
    else:
        payload = payload.replace(b'"livemode": false', b'"livemode": true ')
    r = await app.http.post("/stripe/webhook", content=payload, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_signature"
    assert err["param"] == "Stripe-Signature"
    assert await events_seen(app) == {}
    assert (await app.rt.billing.subscriptions.get(ada.id)).plan == "free"


async def test_any_v1_signature_may_match(app: App, standin: StripeStandIn) -> None:
    """During a secret roll Stripe signs with both: one good v1 entry is enough."""
    ada, events = await subscribed(app, standin)
    payload, headers = signed(events[0])
    t, good = headers["Stripe-Signature"].split(",")
    headers["Stripe-Signature"] = f"{t},v1={'a' * 64},{good},v0={'b' * 64}"
    r = await app.http.post("/stripe/webhook", content=payload, headers=headers)
    assert r.status_code == 200, r.text
    assert (await app.rt.billing.subscriptions.get(ada.id)).plan == "pro"


async def test_a_recent_signature_within_300s_is_accepted(app: App, standin: StripeStandIn) -> None:
    _, events = await subscribed(app, standin)
    r = await app.deliver(events[0], timestamp=int(time.time()) - 290)
    assert r.status_code == 200, r.text


async def test_an_unknown_event_type_is_200_and_logged(
    app: App, standin: StripeStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    ev = standin.event("charge.refunded", {"id": "ch_123", "object": "charge"})
    with caplog.at_level(logging.INFO, logger="tollway.stripe.webhook"):
        r = await app.deliver(ev)
    assert r.status_code == 200 and r.json()["outcome"].startswith("ignored: unhandled")
    assert any(ev["id"] in m and "charge.refunded" in m for m in caplog.messages)
    assert (await events_seen(app))[ev["id"]][0] == "charge.refunded"
    assert standin.calls("GET", "/v1/charges/{id}") == []


async def test_out_of_order_delivery_ends_in_stripes_current_state(app: App, standin: StripeStandIn) -> None:
    """Deleted arrives before created: each re-fetches the subscription, so the
    customer ends canceled, as it is in Stripe."""
    ada, events = await subscribed(app, standin)
    sub_id = events[1]["data"]["object"]["id"]
    deleted = standin.cancel_subscription(sub_id)
    assert (await app.deliver(deleted)).status_code == 200
    assert (await app.deliver(events[1])).status_code == 200  # created, late
    assert (await app.deliver(events[0])).status_code == 200  # checkout completed, later still
    sub = await app.rt.billing.subscriptions.get(ada.id)
    assert sub.status == "canceled"
    r = await app.http.get("/v1/entitlements", headers=ada.auth)
    assert r.json()["plan"] == "free"  # a canceled subscription is the default plan


async def test_an_old_subscriptions_cancellation_does_not_undo_a_newer_one(
    app: App, standin: StripeStandIn
) -> None:
    ada, events = await subscribed(app, standin)
    old = events[1]["data"]["object"]["id"]
    for ev in events:
        await app.deliver(ev)
    # The customer moved to a new subscription (Team) in Stripe; then the old one's deletion arrives.
    cus = events[1]["data"]["object"]["customer"]
    team = next(p for p in standin.by_kind("price") if p["lookup_key"] == "team")
    new = standin._subscription(
        cus,
        [(team, 1)],
        status="active",
        start=standin.now,
        end=standin.now + 86400 * 30,
        trial_end=None,
        metadata={},
    )
    assert (await app.deliver(standin.event("customer.subscription.created", new))).status_code == 200
    assert (await app.rt.billing.subscriptions.get(ada.id)).plan == "team"
    r = await app.deliver(standin.cancel_subscription(old))
    assert r.status_code == 200 and "replaced" in r.json()["outcome"]
    sub = await app.rt.billing.subscriptions.get(ada.id)
    assert (sub.plan, sub.status, sub.stripe_subscription_id) == ("team", "active", new["id"])


async def test_a_failed_renewal_is_past_due_and_paying_makes_it_active(
    app: App, standin: StripeStandIn
) -> None:
    ada, events = await subscribed(app, standin)
    for ev in events:
        await app.deliver(ev)
    failed, updated = standin.fail_renewal(events[1]["data"]["object"]["id"])
    r = await app.deliver(failed)  # invoice.payment_failed
    assert r.status_code == 200 and "past_due" in r.json()["outcome"]
    assert (await app.rt.billing.subscriptions.get(ada.id)).status == "past_due"
    paid, _ = standin.pay_invoice(failed["data"]["object"]["id"])
    r = await app.deliver(paid)  # invoice.paid
    assert r.status_code == 200 and "active" in r.json()["outcome"]
    assert (await app.rt.billing.subscriptions.get(ada.id)).status == "active"
    r = await app.deliver(updated)  # the stale "past_due" update arrives last: Stripe says active now
    assert (await app.rt.billing.subscriptions.get(ada.id)).status == "active"


async def test_a_plan_change_in_stripe_applies_on_the_next_request(app: App, standin: StripeStandIn) -> None:
    ada, events = await subscribed(app, standin)
    for ev in events:
        await app.deliver(ev)
    team = next(p for p in standin.by_kind("price") if p["lookup_key"] == "team")
    ev = standin.update_subscription(
        events[1]["data"]["object"]["id"], price=team["id"], cancel_at_period_end=True
    )
    assert (await app.deliver(ev)).status_code == 200
    sub = await app.rt.billing.subscriptions.get(ada.id)
    assert (sub.plan, sub.cancel_at_period_end) == ("team", True)
    r = await app.http.get("/v1/entitlements", headers=ada.auth)
    assert r.json()["plan"] == "team"


async def test_a_trial_is_recorded_with_its_end(app: App, standin: StripeStandIn) -> None:
    ada, events = await subscribed(app, standin)
    sub_id = events[1]["data"]["object"]["id"]
    end = standin.now + 7 * 86400
    ev = standin.update_subscription(sub_id, status="trialing", trial_end=end, period=(standin.now, end))
    await app.deliver(ev)
    sub = await app.rt.billing.subscriptions.get(ada.id)
    assert (sub.status, sub.trial_end_us) == ("trialing", end * 1_000_000)


async def test_entitlement_summary_updates_resync_and_compare(app: App, standin: StripeStandIn) -> None:
    _, events = await subscribed(app, standin)
    for ev in events:
        await app.deliver(ev)
    cus = events[1]["data"]["object"]["customer"]
    r = await app.deliver(standin.entitlement_summary_event(cus))
    assert r.status_code == 200
    assert "3 active, as the plan says" in r.json()["outcome"]
    assert standin.calls("GET", "/v1/entitlements/active_entitlements")


async def test_stripe_unreachable_gives_the_event_back_for_redelivery(
    app: App, standin: StripeStandIn
) -> None:
    ada, events = await subscribed(app, standin)
    standin.fail(503, path="/v1/subscriptions")
    r = await app.deliver(events[1])
    assert r.status_code == 502 and r.json()["error"]["code"] == "stripe_error"
    assert await events_seen(app) == {}  # not marked: Stripe will deliver it again
    standin.heal()
    r = await app.deliver(events[1])
    assert r.status_code == 200 and r.json()["duplicate"] is False
    assert (await app.rt.billing.subscriptions.get(ada.id)).plan == "pro"


async def test_an_event_of_someone_else_is_acknowledged_and_ignored(app: App, standin: StripeStandIn) -> None:
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    stranger = standin.customer_create({"name": "X"}, None)[1]  # type: ignore[arg-type]
    pro = next(p for p in standin.by_kind("price") if p["lookup_key"] == "pro")
    sub = standin._subscription(
        stranger["id"],
        [(pro, 1)],
        status="active",
        start=standin.now,
        end=standin.now + 3600,
        trial_end=None,
        metadata={},
    )
    r = await app.deliver(standin.event("customer.subscription.created", sub))
    assert r.status_code == 200 and r.json()["outcome"].startswith("ignored")


async def test_not_json_is_400(app: App, standin: StripeStandIn) -> None:
    payload = b"not json"
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), WEBHOOK_SECRET)
    r = await app.http.post("/stripe/webhook", content=payload, headers={"Stripe-Signature": header})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"
    body = json.dumps({"id": "evt_1", "object": "event", "type": "x", "data": {}})
    header = stripe.WebhookSignature.generate_signature_header(body, WEBHOOK_SECRET)
    r = await app.http.post("/stripe/webhook", content=body, headers={"Stripe-Signature": header})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payload"
