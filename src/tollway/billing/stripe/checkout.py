"""Upgrades through Stripe Checkout, and the customer portal.

``checkout`` opens a Checkout Session in subscription mode for a plan's
prices (the flat monthly price, and the metered neurons price when the plan
bills overage). The tollway customer gets a Stripe customer on first use,
linked both ways (``stripe_objects`` and the subscription row), so the
webhooks that follow find their way back. The subscription itself is
recorded when Stripe says it exists (``checkout.session.completed`` and
``customer.subscription.*``), never when the session is opened.
"""

from __future__ import annotations

from typing import Any

import stripe
from stripe.params import CustomerCreateParams
from stripe.params.checkout import SessionCreateParams, SessionCreateParamsLineItem

from tollway.billing.stripe.service import StripeBilling, plain, stripe_failed
from tollway.billing.stripe.store import CUSTOMER
from tollway.core.errors import conflict, invalid

LIVE = ("trialing", "active", "past_due")  # a Stripe subscription that still stands


async def stripe_customer(sb: StripeBilling, customer_id: str) -> str:
    """The customer's Stripe customer id, made and linked on first use."""
    known = await sb.store.get(CUSTOMER, customer_id)
    if known is not None:
        return known
    sub = await sb.subscriptions.get(customer_id)  # also: 404 for an unknown customer
    if sub.stripe_customer_id:
        return await sb.store.put_once(CUSTOMER, customer_id, sub.stripe_customer_id)
    c = await sb.customers.get(customer_id)
    params: CustomerCreateParams = {"name": c.name, "metadata": {"tollway_customer": customer_id}}
    if c.email:
        params["email"] = c.email
    # One Stripe customer even when two checkouts race: Stripe replays the first
    # answer to the same idempotency key (for 24 hours; after that the link stands).
    made = await sb.client.v1.customers.create_async(
        params, {"idempotency_key": f"tollway-customer-{customer_id}"}
    )
    stripe_id = await sb.store.put_once(CUSTOMER, customer_id, made.id)
    await sb.subscriptions.link_stripe_customer(customer_id, stripe_id)
    return stripe_id


async def checkout(sb: StripeBilling, customer_id: str, plan_key: str) -> dict[str, Any]:
    plan = sb.plans.get(plan_key)
    if plan is None:
        raise invalid("plan_not_found", f"no plan {plan_key!r}; plans: {', '.join(sorted(sb.plans))}", "plan")
    if not sb.plan_price(plan) and not plan.overage:
        raise invalid(
            "plan_not_purchasable", f"the {plan.title} plan is free: there is nothing to check out", "plan"
        )
    prices = await sb.prices_of(plan)
    if (sb.plan_price(plan) and prices.flat is None) or (plan.overage and prices.metered is None):
        raise conflict(
            "stripe_not_synced",
            f"the {plan.title} plan has no Stripe price yet: run `tollway stripe sync`",
            "plan",
        )
    current = await sb.subscriptions.get(customer_id)
    if current.stripe_subscription_id and current.status in LIVE:
        raise conflict(
            "subscription_exists",
            f"this customer already has a Stripe subscription ({current.plan}, {current.status}):"
            " change or cancel it in the customer portal (POST /v1/billing/portal)",
            "plan",
        )
    items: list[SessionCreateParamsLineItem] = []
    if prices.flat is not None:
        items.append({"price": prices.flat, "quantity": 1})
    if prices.metered is not None:
        items.append({"price": prices.metered})  # metered: no quantity
    meta = {"tollway_customer": customer_id, "tollway_plan": plan.lookup_key}
    try:
        cus = await stripe_customer(sb, customer_id)
        params: SessionCreateParams = {
            "mode": "subscription",
            "customer": cus,
            "line_items": items,
            "client_reference_id": customer_id,
            "success_url": sb.settings.billing.success_url,
            "cancel_url": sb.settings.billing.cancel_url,
            "metadata": meta,
            "subscription_data": {"metadata": meta},
        }
        if plan.trial_days:
            params["subscription_data"]["trial_period_days"] = plan.trial_days
        session = plain(await sb.client.v1.checkout.sessions.create_async(params))
    except stripe.StripeError as e:
        raise stripe_failed(e, "open a Checkout Session") from e
    return {
        "object": "checkout_session",
        "id": session["id"],
        "url": session["url"],
        "plan": plan.lookup_key,
        "customer_id": customer_id,
        "stripe_customer_id": cus,
        "expires_at": session.get("expires_at"),
    }


async def portal(sb: StripeBilling, customer_id: str) -> dict[str, Any]:
    cus = await sb.store.get(CUSTOMER, customer_id)
    if cus is None:
        cus = (await sb.subscriptions.get(customer_id)).stripe_customer_id
    if cus is None:
        raise conflict(
            "no_stripe_customer",
            "this customer has not subscribed through Stripe yet: start with POST /v1/billing/checkout",
        )
    try:
        s = plain(
            await sb.client.v1.billing_portal.sessions.create_async(
                {"customer": cus, "return_url": sb.settings.billing.success_url}
            )
        )
    except stripe.StripeError as e:
        raise stripe_failed(e, "open a customer portal session") from e
    return {"object": "billing_portal_session", "id": s["id"], "url": s["url"], "customer_id": customer_id}
