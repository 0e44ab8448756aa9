"""``POST /stripe/webhook``: Stripe's events, verified, each processed once.

1. The ``Stripe-Signature`` header is verified by the SDK
   (``StripeClient.construct_event``): HMAC-SHA256 of ``t.payload`` with the
   endpoint's secret, any ``v1`` entry may match, at most 300 s old. A forged,
   missing or stale signature gets 400 and nothing changes.
2. The event id is claimed in ``stripe_events`` (an insert that only one
   delivery, in one process, can win). A duplicate of a processed event gets
   200 and is not processed again; a duplicate that arrives while the first
   delivery is still working waits for it. If processing fails (Stripe
   unreachable), the claim is given back and the answer is an error, so
   Stripe delivers the event again.
3. The event's object is fetched again from the API rather than taken from
   the payload: events may arrive out of order, and the object as it is now
   is what counts. An old subscription's cancellation never undoes a newer one.

Handled: ``checkout.session.completed``, ``customer.subscription.*``
(created, updated, deleted, paused, resumed…), ``invoice.paid``,
``invoice.payment_failed`` and ``entitlements.active_entitlement_summary.updated``.
Any other type gets 200 and is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import stripe

from tollway.billing.stripe.service import StripeBilling, not_configured, plain, stripe_failed
from tollway.billing.stripe.store import CUSTOMER
from tollway.core.errors import TollwayError, conflict, invalid

log = logging.getLogger("tollway.stripe.webhook")

TOLERANCE_S = 300
STALE_CLAIM_US = 120_000_000  # a claim this old was left by a process that died
WAIT_FOR_OTHER_S = 10.0
MAX_BODY = 1 << 20

# Stripe's subscription statuses → tollway's. ``incomplete`` (the first payment
# is not through yet) is not applied: the plan starts once it is paid.
STATUS = {
    "trialing": "trialing",
    "active": "active",
    "past_due": "past_due",
    "unpaid": "past_due",
    "paused": "past_due",
    "canceled": "canceled",
    "incomplete_expired": "canceled",
}


async def handle(sb: StripeBilling, payload: bytes, signature: str | None) -> dict[str, Any]:
    if not sb.env.webhook_secret:
        raise not_configured("The Stripe webhook")
    if len(payload) > MAX_BODY:
        raise invalid("payload_too_large", "a Stripe event is at most 1 MiB")
    try:
        event = sb.client.construct_event(payload, signature, sb.env.webhook_secret, TOLERANCE_S)
    except stripe.SignatureVerificationError as e:
        raise invalid(
            "invalid_signature",
            f"the Stripe-Signature header does not verify: {e.user_message}",
            "Stripe-Signature",
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise invalid("invalid_payload", "the body is not a Stripe event (JSON object)") from None
    ev = plain(event)
    eid, etype = ev.get("id"), ev.get("type")
    obj = (ev.get("data") or {}).get("object")
    if not isinstance(eid, str) or not isinstance(etype, str) or not isinstance(obj, dict):
        raise invalid("invalid_payload", "a Stripe event has an id, a type and data.object")

    store = sb.store
    deadline = time.monotonic() + WAIT_FOR_OTHER_S
    while True:
        state = await store.claim_event(eid, etype, STALE_CLAIM_US)
        if state == "claimed":
            break
        if state == "done":
            outcome = await store.event_outcome(eid)
            return {"received": True, "id": eid, "type": etype, "duplicate": True, "outcome": outcome}
        if time.monotonic() > deadline:
            raise conflict("event_in_progress", f"event {eid} is being processed by another delivery")
        await asyncio.sleep(0.05)
    try:
        try:
            outcome = await process(sb, etype, obj)
        except stripe.InvalidRequestError as e:
            if e.http_status != 404:
                raise stripe_failed(e, f"fetch the object of event {eid}") from e
            outcome = f"ignored: the event's object is gone from Stripe ({e.user_message})"
        except TollwayError as e:
            if e.status >= 500:
                raise
            outcome = f"error: {e.code}: {e.message}"  # permanent: a retry would fail the same way
            log.error("Stripe event %s (%s) not applied: %s", eid, etype, outcome)
        except stripe.StripeError as e:
            raise stripe_failed(e, f"fetch the object of event {eid}") from e
    except BaseException:
        await asyncio.shield(store.release_event(eid))
        raise
    await store.finish_event(eid, outcome)
    if outcome.startswith("ignored: unhandled"):
        log.info("Stripe event %s of type %s ignored (not handled)", eid, etype)
    else:
        log.info("Stripe event %s (%s): %s", eid, etype, outcome)
    return {"received": True, "id": eid, "type": etype, "duplicate": False, "outcome": outcome}


async def process(sb: StripeBilling, etype: str, obj: dict[str, Any]) -> str:
    v1 = sb.client.v1
    oid = obj.get("id")
    if etype == "checkout.session.completed" and isinstance(oid, str):
        return await _checkout_completed(sb, plain(await v1.checkout.sessions.retrieve_async(oid)))
    if etype.startswith("customer.subscription.") and isinstance(oid, str):
        return await apply_subscription(sb, plain(await v1.subscriptions.retrieve_async(oid)))
    if etype in ("invoice.paid", "invoice.payment_failed") and isinstance(oid, str):
        inv = plain(await v1.invoices.retrieve_async(oid))
        sub_id = _invoice_subscription(inv)
        if sub_id is None:
            return "ignored: the invoice is not a subscription's"
        out = await apply_subscription(sb, plain(await v1.subscriptions.retrieve_async(sub_id)))
        return f"invoice {oid} {inv.get('status')}; {out}"
    if etype == "entitlements.active_entitlement_summary.updated":
        return await _entitlements(sb, _id(obj.get("customer")))
    return f"ignored: unhandled event type {etype}"


def _id(v: Any) -> str | None:
    """An expandable field: an id, or the object with one."""
    if isinstance(v, dict):
        v = v.get("id")
    return v if isinstance(v, str) else None


def _invoice_subscription(inv: dict[str, Any]) -> str | None:
    parent = inv.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(inv.get("subscription"))  # the latter: older API versions


async def _customer_of(sb: StripeBilling, stripe_customer: str | None, *hints: Any) -> str | None:
    """The tollway customer of a Stripe customer: by the recorded link, else by
    the tollway id carried in metadata (then linked)."""
    if stripe_customer is None:
        return None
    known = await sb.store.local_for(CUSTOMER, stripe_customer)
    if known is not None:
        return known
    known = await sb.subscriptions.customer_for_stripe(stripe_customer)
    if known is not None:  # linked before stripe_objects knew it: record it, so its usage is pushed
        await sb.store.put_once(CUSTOMER, known, stripe_customer)
        return known
    for h in hints:
        if isinstance(h, str) and h:
            try:
                await sb.customers.get(h)
            except TollwayError:
                continue
            if await link(sb, h, stripe_customer):
                return h
    return None


async def link(sb: StripeBilling, customer_id: str, stripe_customer: str) -> bool:
    """Link a tollway customer and a Stripe customer (both records); False if
    either is already linked elsewhere."""
    other = await sb.subscriptions.customer_for_stripe(stripe_customer)
    if other is not None and other != customer_id:
        return False
    stored = await sb.store.put_once(CUSTOMER, customer_id, stripe_customer)
    if stored != stripe_customer:
        return False
    if other is None:
        await sb.subscriptions.link_stripe_customer(customer_id, stripe_customer)
    return True


async def _checkout_completed(sb: StripeBilling, cs: dict[str, Any]) -> str:
    if cs.get("mode") != "subscription":
        return "ignored: not a subscription checkout"
    meta = cs.get("metadata") or {}
    customer_id = cs.get("client_reference_id") or meta.get("tollway_customer")
    stripe_customer = _id(cs.get("customer"))
    if not isinstance(customer_id, str) or stripe_customer is None:
        return "ignored: the session names no tollway customer"
    try:
        await sb.customers.get(customer_id)
    except TollwayError:
        return f"ignored: no tollway customer {customer_id!r}"
    if not await link(sb, customer_id, stripe_customer):
        return f"ignored: {stripe_customer} or {customer_id} is linked to another customer"
    sub_id = _id(cs.get("subscription"))
    if sub_id is None:
        return f"linked {customer_id} to {stripe_customer}; no subscription yet"
    sub = plain(await sb.client.v1.subscriptions.retrieve_async(sub_id))
    return await apply_subscription(sb, sub)


def _us(ts: Any) -> int | None:
    return int(ts) * 1_000_000 if isinstance(ts, int) and not isinstance(ts, bool) else None


async def apply_subscription(sb: StripeBilling, sub: dict[str, Any]) -> str:
    """Set the customer's subscription from Stripe's subscription object as it is now."""
    sid = sub["id"]
    meta = sub.get("metadata") or {}
    customer_id = await _customer_of(sb, _id(sub.get("customer")), meta.get("tollway_customer"))
    if customer_id is None:
        return f"ignored: subscription {sid} is not a tollway customer's"
    items = (sub.get("items") or {}).get("data") or []
    plan = None
    for item in items:
        plan = await sb.plan_of_price(item.get("price") or {})
        if plan is not None:
            break
    if plan is None:
        return f"ignored: subscription {sid} has no price of a tollway plan (run `tollway stripe sync`?)"
    status = STATUS.get(sub.get("status", ""))
    if status is None:
        return f"waiting: subscription {sid} is {sub.get('status')}"
    current = await sb.subscriptions.get(customer_id)
    if current.stripe_subscription_id not in (None, sid) and current.status != "canceled":
        if status == "canceled":
            return f"ignored: {sid} was replaced by {current.stripe_subscription_id}"
    first = items[0] if items else {}
    start = _us(first.get("current_period_start")) or _us(sub.get("current_period_start"))
    end = _us(first.get("current_period_end")) or _us(sub.get("current_period_end"))
    if start is None or end is None or end <= start:
        return f"ignored: subscription {sid} has no current period"
    await sb.subscriptions.apply_stripe(
        customer_id,
        plan=plan,
        status=status,
        period_start_us=start,
        period_end_us=end,
        trial_end_us=_us(sub.get("trial_end")) if status == "trialing" else None,
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        stripe_subscription_id=sid,
    )
    until = dt.datetime.fromtimestamp(end / 1e6, dt.UTC).strftime("%Y-%m-%d")
    return f"{customer_id}: {plan} {status} until {until} ({sid})"


async def _entitlements(sb: StripeBilling, stripe_customer: str | None) -> str:
    """Stripe's view of the customer's features changed: bring the subscription
    up to date, then compare Stripe's active entitlements with the plan's."""
    customer_id = await _customer_of(sb, stripe_customer)
    if customer_id is None or stripe_customer is None:
        return "ignored: not a tollway customer's entitlements"
    out = ""
    current = await sb.subscriptions.get(customer_id)
    if current.stripe_subscription_id:
        sub = plain(await sb.client.v1.subscriptions.retrieve_async(current.stripe_subscription_id))
        out = await apply_subscription(sb, sub) + "; "
        current = await sb.subscriptions.get(customer_id)
    got: set[str] = set()
    listing = await sb.client.v1.entitlements.active_entitlements.list_async(
        {"customer": stripe_customer, "limit": 100}
    )
    async for e in listing.auto_paging_iter():
        got.add(e.lookup_key)
    plan = sb.plans.get(current.plan)
    want = {f for f in plan.features if f != "*"} if plan else set()
    if plan is not None and "*" in plan.features:
        return out + f"entitlements: {len(got)} active (the plan includes every feature)"
    missing, extra = sorted(want - got), sorted(got - want)
    if missing or extra:
        log.warning(
            "Stripe entitlements of %s differ from plan %s: missing %s, extra %s",
            customer_id,
            current.plan,
            missing,
            extra,
        )
        return out + f"entitlements differ from the plan: missing {missing}, extra {extra}"
    return out + f"entitlements: {len(got)} active, as the plan says"
