"""``StripeBilling``: the SDK client and what the Stripe parts share.

The client is the official SDK's ``StripeClient`` on its aiohttp transport, so
calls are awaited on the event loop; tests and production take the same path,
only the base URL differs (``STRIPE_API_BASE``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import stripe
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.billing.config import BillingSettings, configured_plans
from tollway.billing.plans import Plan
from tollway.billing.stripe import units
from tollway.billing.stripe.env import StripeEnv
from tollway.billing.stripe.store import StripeStore
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.money import parse_amount, parse_price
from tollway.identity.customers import Customers

if TYPE_CHECKING:
    import datetime as dt

    from tollway.billing.stripe.meter import MeterPusher
    from tollway.billing.subscriptions import Subscriptions

log = logging.getLogger("tollway.stripe")

METER_EVENT = "tollway_neurons"  # the billing meter's event_name (and its local_id)
NETWORK_RETRIES = 2  # the SDK's own retries (same idempotency key) for ordinary calls


def not_configured(what: str = "Stripe") -> TollwayError:
    """409: the request is fine, this server is not set up for it (and a 5xx
    would say the server failed, which it did not)."""
    return TollwayError(
        ErrorType.CONFLICT,
        "stripe_not_configured",
        f"{what} is not configured on this server: set STRIPE_API_KEY (and STRIPE_WEBHOOK_SECRET"
        " for webhooks); see docs/stripe.md",
        status=409,
    )


def plain(obj: Any) -> dict[str, Any]:
    """A Stripe object as plain data (nested objects as dicts)."""
    d: dict[str, Any] = obj.to_dict()
    return d


def stripe_failed(e: stripe.StripeError, what: str) -> TollwayError:
    """A Stripe call that failed, as tollway's error (502: the upstream failed)."""
    code = getattr(e, "code", None) or type(e).__name__
    return TollwayError(
        ErrorType.API,
        "stripe_error",
        f"Stripe refused or failed to {what}: {code}: {e.user_message or e}",
        status=502,
    )


@dataclass(frozen=True, slots=True)
class PlanPrices:
    """What checkout sells for one plan: its Stripe price ids."""

    flat: str | None
    metered: str | None


def flat_lookup_key(plan: str) -> str:
    return plan


def metered_lookup_key(plan: str) -> str:
    return f"{plan}:neurons"  # ':' never appears in a plan's lookup key


class StripeBilling:
    def __init__(
        self,
        env: StripeEnv,
        settings: BillingSettings,
        engine: AsyncEngine,
        clock: Clock,
        customers: Customers,
        subscriptions: Subscriptions,
    ) -> None:
        self.env = env
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.customers = customers
        self.subscriptions = subscriptions
        self.store = StripeStore(engine, clock)
        self.plans: dict[str, Plan] = configured_plans(settings)
        default_rate = parse_amount(settings.inference.usd_per_1000_neurons)
        self.rates = {
            k: parse_amount(p.usd_per_1000_neurons) if p.usd_per_1000_neurons else default_rate
            for k, p in self.plans.items()
        }
        self.http = stripe.AIOHTTPClient(timeout=30)
        bases: dict[str, str] = {}
        if env.api_base:
            bases["api"] = env.api_base
        if env.meter_events_base:
            bases["meter_events"] = env.meter_events_base
        self.client = stripe.StripeClient(
            env.api_key,
            base_addresses=bases,  # type: ignore[arg-type]
            http_client=self.http,
            max_network_retries=NETWORK_RETRIES,
        )
        self._pusher: MeterPusher | None = None

    async def aclose(self) -> None:
        if self._pusher is not None:
            await self._pusher.stop()
        if getattr(self.http, "_cached_session", None) is not None:  # made on first use only
            await self.http.close_async()  # type: ignore[no-untyped-call]

    # ---------------------------------------------------------------- plans

    def plan_price(self, plan: Plan) -> int:
        return parse_price(plan.price)

    def metered_price_cents(self, plan: Plan) -> str:
        return units.cents_per_mneuron(self.rates[plan.lookup_key])

    async def prices_of(self, plan: Plan) -> PlanPrices:
        return PlanPrices(
            await self.store.get("price", flat_lookup_key(plan.lookup_key))
            if self.plan_price(plan)
            else None,
            await self.store.get("price", metered_lookup_key(plan.lookup_key)) if plan.overage else None,
        )

    async def plan_of_price(self, price: dict[str, Any]) -> str | None:
        """The plan a Stripe price belongs to: by its lookup key, else by the
        ids ``sync`` recorded (the price, then its product)."""
        lk = price.get("lookup_key")
        if isinstance(lk, str) and lk.removesuffix(":neurons") in self.plans:
            return lk.removesuffix(":neurons")
        if isinstance(price.get("id"), str):
            local = await self.store.local_for("price", price["id"])
            if local is not None and local.removesuffix(":neurons") in self.plans:
                return local.removesuffix(":neurons")
        product = price.get("product")
        if isinstance(product, dict):
            product = product.get("id")
        if isinstance(product, str):
            local = await self.store.local_for("product", product)
            if local in self.plans:
                return local
        return None

    # ------------------------------------------------------------ the parts

    async def sync(self) -> list[dict[str, Any]]:
        from tollway.billing.stripe.sync import sync

        return await sync(self)

    async def checkout(self, customer_id: str, plan: str) -> dict[str, Any]:
        from tollway.billing.stripe.checkout import checkout

        return await checkout(self, customer_id, plan)

    async def portal(self, customer_id: str) -> dict[str, Any]:
        from tollway.billing.stripe.checkout import portal

        return await portal(self, customer_id)

    async def webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        from tollway.billing.stripe.webhook import handle

        return await handle(self, payload, signature)

    async def reconcile(self, day: dt.date, *, fix: bool = True) -> dict[str, Any]:
        from tollway.billing.stripe.reconcile import reconcile

        return await reconcile(self, day, fix=fix)

    def pusher(self) -> MeterPusher:
        """The meter pusher of this process (one; started by the server)."""
        if self._pusher is None:
            from tollway.billing.stripe.meter import MeterPusher

            self._pusher = MeterPusher(self)
        return self._pusher
