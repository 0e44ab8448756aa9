"""``tollway stripe sync``: Stripe's catalog made from the plans, idempotently.

For each plan: a product; a flat monthly price (lookup key = the plan's) when
the plan has a price; a metered price on the ``tollway_neurons`` meter (lookup
key ``<plan>:neurons``) when it bills overage; and its features (entitlement
features by lookup key, ``*`` skipped) attached to the product. The ids go
into ``stripe_objects``.

Everything is read back and compared first, and only what differs is written,
so a second run makes no write at all. Stripe prices cannot change their
amount: a changed price is a new price that takes over the lookup key, and
the old one is archived. Products get a fixed id (``tollway_<plan>``), so a
fresh database (or two syncs at once) finds the same product instead of
making another.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import stripe
from stripe.params import PriceCreateParams

from tollway.billing.plans import Plan
from tollway.billing.stripe import units
from tollway.billing.stripe.service import (
    METER_EVENT,
    StripeBilling,
    flat_lookup_key,
    metered_lookup_key,
    plain,
    stripe_failed,
)
from tollway.billing.stripe.store import FEATURE, METER, PRICE, PRODUCT
from tollway.core.errors import conflict

Report = list[dict[str, Any]]


def product_id(plan: str) -> str:
    """Stripe product ids take letters, digits, ``_`` and ``-``."""
    return "tollway_" + re.sub(r"[^a-z0-9_-]", "_", plan)


def _missing(e: stripe.StripeError) -> bool:
    return isinstance(e, stripe.InvalidRequestError) and e.http_status == 404


async def sync(sb: StripeBilling) -> Report:
    ids = [product_id(k) for k in sb.plans]
    if len(set(ids)) != len(ids):
        raise conflict(
            "plan_keys_collide",
            "two plans map to one Stripe product id (they differ only in '.' vs '_'); rename one",
        )
    report: Report = []
    try:
        meter = await _meter(sb, report)
        keys = sorted({f for p in sb.plans.values() for f in p.features if f != "*"})
        features = {k: await _feature(sb, k, report) for k in keys}
        for plan in sb.plans.values():
            product = await _product(sb, plan, report)
            await _price(sb, flat_lookup_key(plan.lookup_key), _flat(sb, plan, product), report)
            await _price(sb, metered_lookup_key(plan.lookup_key), _metered(sb, plan, product, meter), report)
            await _attach(sb, plan, product, features, report)
    except stripe.StripeError as e:
        raise stripe_failed(e, "sync the catalog") from e
    return report


def _note(report: Report, kind: str, local_id: str, stripe_id: str, action: str) -> None:
    report.append({"kind": kind, "local_id": local_id, "stripe_id": stripe_id, "action": action})


async def _record(sb: StripeBilling, kind: str, local_id: str, stripe_id: str) -> None:
    if await sb.store.get(kind, local_id) != stripe_id:
        await sb.store.put(kind, local_id, stripe_id)


# -------------------------------------------------------------------- meter


async def _meter(sb: StripeBilling, report: Report) -> str:
    c = sb.client.v1.billing.meters
    meter: dict[str, Any] | None = None
    stored = await sb.store.get(METER, METER_EVENT)
    if stored is not None:
        try:
            meter = plain(await c.retrieve_async(stored))
        except stripe.StripeError as e:
            if not _missing(e):
                raise
        if meter is not None and meter.get("status") != "active":
            meter = None
    if meter is None:
        async for m in (await c.list_async({"status": "active", "limit": 100})).auto_paging_iter():
            if m.event_name == METER_EVENT:
                meter = plain(m)
                break
    action = "unchanged"
    if meter is None:
        meter = plain(
            await c.create_async(
                {
                    "display_name": "tollway neurons (milli-neurons)",
                    "event_name": METER_EVENT,
                    "default_aggregation": {"formula": "sum"},
                    "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                    "value_settings": {"event_payload_key": "value"},
                }
            )
        )
        action = "created"
    if (
        meter["default_aggregation"]["formula"] != "sum"
        or meter["value_settings"]["event_payload_key"] != "value"
        or meter["customer_mapping"]["event_payload_key"] != "stripe_customer_id"
    ):
        raise conflict(
            "stripe_meter_mismatch",
            f"Stripe meter {meter['id']} ({METER_EVENT}) must sum payload 'value' by 'stripe_customer_id';"
            " deactivate it in Stripe and run sync again",
        )
    await _record(sb, METER, METER_EVENT, meter["id"])
    _note(report, "meter", METER_EVENT, meter["id"], action)
    return str(meter["id"])


# ----------------------------------------------------------------- features


async def _feature(sb: StripeBilling, lookup_key: str, report: Report) -> str:
    c = sb.client.v1.entitlements.features
    found = (await c.list_async({"lookup_key": lookup_key, "limit": 1})).data
    action = "unchanged"
    if found:
        feat = plain(found[0])
        if not feat["active"]:
            feat = plain(await c.update_async(feat["id"], {"active": True}))
            action = "updated"
    else:
        feat = plain(
            await c.create_async(
                {"name": lookup_key, "lookup_key": lookup_key, "metadata": {"tollway_feature": lookup_key}}
            )
        )
        action = "created"
    await _record(sb, FEATURE, lookup_key, feat["id"])
    _note(report, "feature", lookup_key, feat["id"], action)
    return str(feat["id"])


# ----------------------------------------------------------------- products


async def _product(sb: StripeBilling, plan: Plan, report: Report) -> str:
    c = sb.client.v1.products
    key = plan.lookup_key
    pid = await sb.store.get(PRODUCT, key) or product_id(key)
    meta = {"tollway_plan": key}
    product: dict[str, Any] | None = None
    try:
        product = plain(await c.retrieve_async(pid))
    except stripe.StripeError as e:
        if not _missing(e):
            raise
    action = "unchanged"
    if product is None:
        try:
            product = plain(await c.create_async({"id": pid, "name": plan.title, "metadata": meta}))
            action = "created"
        except stripe.InvalidRequestError as e:
            if e.code != "resource_already_exists":
                raise
            product = plain(await c.retrieve_async(pid))  # made concurrently
    if (
        product["name"] != plan.title
        or not product["active"]
        or product.get("metadata", {}).get("tollway_plan") != key
    ):
        product = plain(await c.update_async(pid, {"name": plan.title, "active": True, "metadata": meta}))
        action = "updated"
    await _record(sb, PRODUCT, key, product["id"])
    _note(report, "product", key, product["id"], action)
    return str(product["id"])


# ------------------------------------------------------------------- prices


def _flat(sb: StripeBilling, plan: Plan, product: str) -> PriceCreateParams | None:
    micros = sb.plan_price(plan)
    if micros <= 0:
        return None
    p: PriceCreateParams = {
        "currency": "usd",
        "product": product,
        "lookup_key": flat_lookup_key(plan.lookup_key),
        "transfer_lookup_key": True,
        "nickname": f"{plan.title} (monthly)",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "metadata": {"tollway_plan": plan.lookup_key},
    }
    if micros % units.MICROS_PER_CENT == 0:
        p["unit_amount"] = micros // units.MICROS_PER_CENT
    else:
        p["unit_amount_decimal"] = Decimal(units.cents(micros))
    return p


def _metered(sb: StripeBilling, plan: Plan, product: str, meter: str) -> PriceCreateParams | None:
    if not plan.overage:
        return None
    return {
        "currency": "usd",
        "product": product,
        "lookup_key": metered_lookup_key(plan.lookup_key),
        "transfer_lookup_key": True,
        "nickname": f"{plan.title} neurons (per milli-neuron)",
        "billing_scheme": "per_unit",
        "unit_amount_decimal": Decimal(sb.metered_price_cents(plan)),
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "metered", "meter": meter},
        "metadata": {"tollway_plan": plan.lookup_key, "tollway_unit": "milli-neuron"},
    }


def _matches(price: dict[str, Any], want: PriceCreateParams) -> bool:
    rec: dict[str, Any] = price.get("recurring") or {}
    wrec: dict[str, Any] = dict(want.get("recurring") or {})
    amount = want.get("unit_amount_decimal")
    if amount is None:
        amount = Decimal(want.get("unit_amount", 0))
    return (
        bool(price["active"])
        and price["product"] == want.get("product")
        and price["currency"] == want["currency"]
        and price.get("lookup_key") == want.get("lookup_key")
        and price.get("billing_scheme") == "per_unit"
        and Decimal(str(price.get("unit_amount_decimal"))) == Decimal(amount)
        and rec.get("interval") == wrec.get("interval")
        and rec.get("interval_count", 1) == wrec.get("interval_count", 1)
        and rec.get("usage_type") == wrec.get("usage_type")
        and rec.get("meter") == wrec.get("meter")
    )


async def _price(sb: StripeBilling, lookup_key: str, want: PriceCreateParams | None, report: Report) -> None:
    c = sb.client.v1.prices
    current: dict[str, Any] | None = None
    stored = await sb.store.get(PRICE, lookup_key)
    if stored is not None:
        try:
            current = plain(await c.retrieve_async(stored))
        except stripe.StripeError as e:
            if not _missing(e):
                raise
    if current is None or not current["active"] or current.get("lookup_key") != lookup_key:
        found = (await c.list_async({"lookup_keys": [lookup_key], "active": True, "limit": 1})).data
        if found:
            current = plain(found[0])
    if want is None:  # the plan no longer has this price: archive it
        if current is not None and current["active"]:
            await c.update_async(current["id"], {"active": False})
            _note(report, "price", lookup_key, current["id"], "archived")
        return
    if current is not None and _matches(current, want):
        await _record(sb, PRICE, lookup_key, current["id"])
        _note(report, "price", lookup_key, current["id"], "unchanged")
        return
    new = plain(await c.create_async(want))
    await _record(sb, PRICE, lookup_key, new["id"])
    _note(report, "price", lookup_key, new["id"], "created")
    if current is not None and current["active"] and current["id"] != new["id"]:
        await c.update_async(current["id"], {"active": False})
        _note(report, "price", lookup_key, current["id"], "archived")


# ----------------------------------------------------------- product features


async def _attach(
    sb: StripeBilling, plan: Plan, product: str, features: dict[str, str], report: Report
) -> None:
    c = sb.client.v1.products.features
    want = {features[f]: f for f in plan.features if f != "*"}
    attached: dict[str, str] = {}  # feature id → product_feature id
    async for pf in (await c.list_async(product, {"limit": 100})).auto_paging_iter():
        attached[pf.entitlement_feature.id] = pf.id
    for fid, lk in want.items():
        if fid not in attached:
            await c.create_async(product, {"entitlement_feature": fid})
            _note(report, "product_feature", f"{plan.lookup_key}/{lk}", fid, "attached")
    for fid, pfid in attached.items():
        if fid not in want:
            await c.delete_async(product, pfid)
            _note(report, "product_feature", plan.lookup_key, fid, "detached")
