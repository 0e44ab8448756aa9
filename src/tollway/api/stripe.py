"""Stripe over HTTP: Checkout and the customer portal for the calling customer
(``/v1/billing/checkout``, ``/v1/billing/portal``), and Stripe's webhook
(``/stripe/webhook``). Without Stripe configured they answer 409
``stripe_not_configured``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import Strict
from tollway.identity.keys import ApiKey

if TYPE_CHECKING:
    from tollway.billing.stripe.service import StripeBilling

router = APIRouter(route_class=JsonRoute, tags=["stripe"])


class CheckoutIn(Strict):
    plan: str = Field(min_length=1, max_length=64, description="The plan's lookup key")


def _stripe(request: Request, what: str = "Stripe") -> StripeBilling:
    sb = runtime(request).stripe
    if sb is None:
        from tollway.billing.stripe.service import not_configured

        raise not_configured(what)
    return sb


@router.post(
    "/v1/billing/checkout",
    summary="Subscribe to a paid plan through Stripe Checkout: the page to send the customer to",
)
async def checkout(body: CheckoutIn, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "billing:write")
    return await _stripe(request).checkout(key.customer_id, body.plan)


@router.post("/v1/billing/portal", summary="A Stripe customer-portal link (change plan, cards, invoices)")
async def portal(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "billing:write")
    return await _stripe(request).portal(key.customer_id)


@router.post("/stripe/webhook", summary="Stripe's events (signed with STRIPE_WEBHOOK_SECRET)")
async def webhook(request: Request) -> dict[str, Any]:
    sb = _stripe(request, "The Stripe webhook")
    return await sb.webhook(await request.body(), request.headers.get("stripe-signature"))
