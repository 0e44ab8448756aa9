"""Stripe billing, through the official ``stripe`` SDK (see docs/stripe.md).

Stripe is optional: it is on when ``STRIPE_API_KEY`` is set, and everything
else in tollway works without it. The SDK loads only then, so this package's
top level stays light: :func:`from_env` returns ``None`` when Stripe is off.

- :mod:`.env` reads ``STRIPE_*`` from the environment;
- :mod:`.service` builds the SDK client (``StripeBilling``) and holds what the parts share;
- :mod:`.sync` makes the products, prices, meter and features from the plans;
- :mod:`.checkout` opens Checkout and customer-portal sessions;
- :mod:`.meter` pushes usage to the ``tollway_neurons`` meter;
- :mod:`.webhook` verifies and applies Stripe's events, each once;
- :mod:`.reconcile` compares a day's usage with Stripe's meter and fixes drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tollway.billing.stripe.env import StripeEnv

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tollway.billing.config import BillingSettings
    from tollway.billing.stripe.service import StripeBilling
    from tollway.billing.subscriptions import Subscriptions
    from tollway.core.clock import Clock
    from tollway.identity.customers import Customers

__all__ = ["StripeEnv", "from_env"]


def from_env(
    settings: BillingSettings,
    engine: AsyncEngine,
    clock: Clock,
    customers: Customers,
    subscriptions: Subscriptions,
    env: Mapping[str, str] | None = None,
) -> StripeBilling | None:
    """Stripe billing configured from ``STRIPE_*``, or ``None`` without ``STRIPE_API_KEY``."""
    cfg = StripeEnv.from_environ(os.environ if env is None else env)
    if cfg is None:
        return None
    from tollway.billing.stripe.service import StripeBilling

    return StripeBilling(cfg, settings, engine, clock, customers, subscriptions)
