"""The stand-in is as strict as Stripe where tollway's code could go wrong:
what it accepts here, Stripe accepts (checked with the official SDK)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import stripe

from stripe_standin import API_KEY, StripeStandIn


@pytest.fixture
async def sdk(standin: StripeStandIn) -> AsyncIterator[stripe.StripeClient]:
    http = stripe.AIOHTTPClient()
    yield stripe.StripeClient(
        API_KEY,
        base_addresses={"api": standin.api_url, "meter_events": standin.meter_events_url},
        http_client=http,
        max_network_retries=0,
    )
    await http.close_async()


async def test_unknown_and_missing_parameters_are_400(
    sdk: stripe.StripeClient, standin: StripeStandIn
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as e:
        await sdk.v1.products.create_async({"name": "x", "colour": "red"})
    assert (e.value.http_status, e.value.code, e.value.param) == (400, "parameter_unknown", "colour")
    with pytest.raises(stripe.InvalidRequestError) as e:
        await sdk.v1.products.create_async({"metadata": {"a": "b"}})
    assert (e.value.code, e.value.param) == ("parameter_missing", "name")
    with pytest.raises(stripe.InvalidRequestError) as e:  # nested: recurring[colour]
        await sdk.v1.prices.create_async(
            {
                "currency": "usd",
                "product": "p",
                "unit_amount": 1,
                "recurring": {"interval": "month", "colour": 1},
            }
        )
    assert e.value.param == "recurring[colour]"
    assert standin.objects == {}


async def test_types_are_checked(standin: StripeStandIn) -> None:
    async with httpx.AsyncClient(base_url=standin.api_url) as c:
        h = {"Authorization": f"Bearer {API_KEY}", "Stripe-Version": stripe.api_version}
        r = await c.post("/v1/products", data={"name": "x", "active": "maybe"}, headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == "parameter_invalid_boolean"
        r = await c.post(
            "/v1/billing/meters",
            data={
                "display_name": "m",
                "event_name": "e",
                "default_aggregation[formula]": "sum",
                "customer_mapping[type]": "by_name",
                "customer_mapping[event_payload_key]": "c",
            },
            headers=h,
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "customer_mapping[type]"
        r = await c.get("/v1/prices", params={"limit": "ten"}, headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == "parameter_invalid_integer"


async def test_authentication(standin: StripeStandIn) -> None:
    async with httpx.AsyncClient(base_url=standin.api_url) as c:
        assert (await c.get("/v1/prices")).status_code == 401
        r = await c.get(
            "/v1/prices", headers={"Authorization": "Bearer sk_test_wrong", "Stripe-Version": "x"}
        )
        assert r.status_code == 401 and "Invalid API Key" in r.json()["error"]["message"]
        r = await c.get("/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 404


async def test_idempotency_keys_replay_or_conflict(sdk: stripe.StripeClient, standin: StripeStandIn) -> None:
    a = await sdk.v1.customers.create_async({"name": "A"}, {"idempotency_key": "k1"})
    b = await sdk.v1.customers.create_async({"name": "A"}, {"idempotency_key": "k1"})
    assert a.id == b.id and len(list(standin.by_kind("customer"))) == 1
    with pytest.raises(stripe.IdempotencyError):
        await sdk.v1.customers.create_async({"name": "B"}, {"idempotency_key": "k1"})


async def test_metered_line_items_take_no_quantity(sdk: stripe.StripeClient, standin: StripeStandIn) -> None:
    await sdk.v1.products.create_async({"id": "p", "name": "P"})
    m = await sdk.v1.billing.meters.create_async(
        {"display_name": "m", "event_name": "e", "default_aggregation": {"formula": "sum"}}
    )
    price = await sdk.v1.prices.create_async(
        {
            "currency": "usd",
            "product": "p",
            "unit_amount_decimal": "0.0000011",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": m.id},
        }
    )
    with pytest.raises(stripe.InvalidRequestError) as e:
        await sdk.v1.checkout.sessions.create_async(
            {
                "mode": "subscription",
                "line_items": [{"price": price.id, "quantity": 1}],
                "success_url": "https://x",
            }
        )
    assert e.value.param == "line_items[0][quantity]"
    with pytest.raises(stripe.InvalidRequestError) as e:  # metered without a meter
        await sdk.v1.prices.create_async(
            {
                "currency": "usd",
                "product": "p",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert e.value.param == "recurring[meter]"


async def test_faults_can_be_injected(sdk: stripe.StripeClient, standin: StripeStandIn) -> None:
    standin.fail(429, times=1, retry_after=3)
    with pytest.raises(stripe.RateLimitError) as e:
        await sdk.v1.customers.create_async({"name": "A"})
    assert e.value.headers is not None and e.value.headers.get("Retry-After") == "3"
    standin.fail(503, times=1)
    with pytest.raises(stripe.APIError):
        await sdk.v1.customers.create_async({"name": "A"})
    assert (await sdk.v1.customers.create_async({"name": "A"})).id.startswith("cus_")
    assert [r.status for r in standin.requests] == [429, 503, 200]
