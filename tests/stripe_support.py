"""Fixtures for the Stripe tests: the stand-in (one per session, emptied per
test), a runtime whose ``STRIPE_*`` point at it, usage recorded through the
real charge path, and signed webhook deliveries (the SDK's own signer)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import stripe

from conftest import ADMIN, settings_for
from stripe_standin import StripeStandIn
from tollway.charge.hold import Payer
from tollway.runtime import Runtime

WEBHOOK_SECRET = "whsec_test_tollway_0123456789abcdef"
PLANS: list[dict[str, Any]] = [
    {"lookup_key": "free", "name": "Free", "daily_neurons": 1000, "features": ["ai.chat"]},
    {
        "lookup_key": "pro",
        "name": "Pro",
        "price": "$20",
        "trial_days": 0,
        "included_neurons": 100_000,
        "overage": True,
        "features": ["ai.chat", "ai.embeddings", "support.email"],
    },
    {"lookup_key": "team", "name": "Team", "price": "$99.999", "features": ["*"]},
    {
        "lookup_key": "payg",
        "name": "Pay as you go",
        "overage": True,
        "usd_per_1000_neurons": "$0.02",
        "features": ["ai.chat"],
    },
]


def stripe_settings(db_url: str, plans: list[dict[str, Any]] | None = None, **billing: Any) -> Any:
    return settings_for(
        db_url,
        inference={"usd_per_1000_neurons": "$0.011", "free_neurons_per_day": 0},
        billing={
            "plans": PLANS if plans is None else plans,
            "default_plan": "free",
            "meter_lag_seconds": 0,
            "meter_push_interval_seconds": 0.05,
            "success_url": "https://app.example/billing/done",
            "cancel_url": "https://app.example/billing/canceled",
            **billing,
        },
    )


@pytest.fixture(scope="session")
def standin_server() -> Iterator[StripeStandIn]:
    with StripeStandIn() as s:
        yield s


@pytest.fixture
def standin(standin_server: StripeStandIn, monkeypatch: pytest.MonkeyPatch) -> StripeStandIn:
    standin_server.reset()
    for k, v in {**standin_server.env(), "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}.items():
        monkeypatch.setenv(k, v)
    return standin_server


@pytest.fixture
async def srt(db_url: str, standin: StripeStandIn) -> AsyncIterator[Runtime]:
    """A runtime with Stripe on (pointed at the stand-in)."""
    rt = Runtime.build(stripe_settings(db_url))
    assert rt.stripe is not None
    yield rt
    await rt.close()


@dataclass
class App:
    rt: Runtime
    http: httpx.AsyncClient

    async def customer(self, name: str = "Ada", email: str | None = "ada@example.com") -> Customer:
        body: dict[str, Any] = {"name": name}
        if email:
            body["email"] = email
        c = (await self.http.post("/admin/customers", json=body, headers=ADMIN)).json()
        await self.rt.ledger.transfer("sys_funding", c["account_id"], 10**9)
        r = await self.http.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN)
        return Customer(c["id"], c["account_id"], r.json()["key"])

    async def deliver(self, event: dict[str, Any], **kw: Any) -> httpx.Response:
        payload, headers = signed(event, **kw)
        return await self.http.post("/stripe/webhook", content=payload, headers=headers)


@dataclass
class Customer:
    id: str
    account_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
async def app(srt: Runtime) -> AsyncIterator[App]:
    from tollway.api.app import create_app

    transport = httpx.ASGITransport(app=create_app(rt=srt))
    async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as http:
        yield App(srt, http)


def signed(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A webhook delivery as Stripe makes it, signed with the SDK's own helper."""
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=timestamp if timestamp is not None else int(time.time())
    )
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


async def use(rt: Runtime, customer: Customer, mneurons: int, **metadata: Any) -> str:
    """Charge ``mneurons`` milli-neurons through the charge path; returns the usage event's id."""
    from sqlalchemy import select

    from tollway.core.money import price_micros
    from tollway.core.schema import usage_events as U

    amount = max(price_micros(mneurons, 11_000), 1)
    payer = Payer(customer.account_id, customer.id)
    async with rt.charger.hold(payer, amount, meter="neurons", description="m") as h:
        h.post(amount, quantity=mneurons, model="m", **metadata)
    assert h.receipt is not None
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(U.c.id).where(U.c.transfer_id == h.receipt.transfer_id))).one()
    return str(row[0])


async def funded(rt: Runtime, name: str = "Ada") -> Customer:
    """A customer with prepaid credit, made directly (no HTTP; no API key)."""
    from tollway.identity.customers import Customers

    c = await Customers(rt.engine, rt.clock).create(name)
    await rt.ledger.transfer("sys_funding", c.account_id, 10**9)
    return Customer(c.id, c.account_id, "")


async def link(rt: Runtime, customer: Customer, standin: StripeStandIn) -> str:
    """Give the customer a Stripe customer (as checkout does), without a checkout."""
    from tollway.billing.stripe.checkout import stripe_customer

    assert rt.stripe is not None
    return await stripe_customer(rt.stripe, customer.id)
