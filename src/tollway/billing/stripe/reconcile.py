"""``tollway stripe reconcile --day D``: a UTC day's usage, tollway against Stripe.

For every customer linked to a Stripe customer, the milli-neurons tollway
billed that day (its usage events, valued as the meter push values them) are
compared with Stripe's meter event summary for the same day. A difference is
reported and, unless it is a dry run, fixed by one more meter event for the
difference (negative when Stripe counted too much), stamped inside the day.

The fix's identifier is deterministic: the day, the Stripe customer and the
two totals it corrects. Running reconcile again before Stripe has counted the
fix sends the same identifier, which Stripe takes once; once it has counted
it, the drift is gone. Either way a drift is fixed once.

A day can be reconciled once it is over and the meter push has passed it
(``tollway stripe status``), and, for a fix, while Stripe still takes events
for it (35 days).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy import and_, select

from tollway.billing.stripe.meter import CURSOR, END, Cursor, metadata_of
from tollway.billing.stripe.service import METER_EVENT, StripeBilling, stripe_failed
from tollway.billing.stripe.store import CUSTOMER, METER
from tollway.billing.stripe.units import billable_mneurons
from tollway.core.errors import conflict, invalid
from tollway.core.schema import stripe_objects as O
from tollway.core.schema import usage_events as U

DAY_S = 86_400
STRIPE_WINDOW_S = 35 * DAY_S


def day_bounds_s(day: dt.date) -> tuple[int, int]:
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return start, start + DAY_S


async def local_totals(sb: StripeBilling, day: dt.date) -> dict[str, tuple[str, int]]:
    """Billed milli-neurons per linked customer: customer → (Stripe customer, total)."""
    start, end = day_bounds_s(day)
    q = (
        select(U.c.customer_id, O.c.stripe_id, U.c.quantity, U.c.amount, U.c.metadata)
        .select_from(U.join(O, and_(O.c.kind == CUSTOMER, O.c.local_id == U.c.customer_id)))
        .where(
            U.c.meter == "neurons",
            U.c.transfer_id.is_not(None),
            U.c.created_at_us >= start * 1_000_000,
            U.c.created_at_us < end * 1_000_000,
        )
    )
    totals: dict[str, int] = defaultdict(int)
    stripe_of: dict[str, str] = {}
    async with sb.engine.connect() as conn:
        for cust, sid, qty, amount, meta in await conn.execute(q):
            totals[cust] += billable_mneurons(int(qty), int(amount), metadata_of(meta))
            stripe_of[cust] = sid
    return {c: (stripe_of[c], t) for c, t in totals.items()}


async def stripe_total(sb: StripeBilling, meter: str, stripe_customer: str, day: dt.date) -> int:
    start, end = day_bounds_s(day)
    listing = await sb.client.v1.billing.meters.event_summaries.list_async(
        meter, {"customer": stripe_customer, "start_time": start, "end_time": end, "limit": 100}
    )
    total = Decimal(0)
    async for s in listing.auto_paging_iter():
        total += Decimal(str(s.aggregated_value))
    return int(total)


async def reconcile(sb: StripeBilling, day: dt.date, *, fix: bool = True) -> dict[str, Any]:
    start, end = day_bounds_s(day)
    now_us = sb.clock.now_us()
    lag_us = sb.settings.billing.meter_lag_seconds * 1_000_000
    if end * 1_000_000 + lag_us > now_us:
        raise invalid("day_not_over", f"{day} (UTC) is not over yet: reconcile days that have ended", "day")
    if fix and start < now_us // 1_000_000 - STRIPE_WINDOW_S:
        raise invalid(
            "day_too_old",
            f"Stripe takes meter events of the last 35 days only; report {day} with --dry-run",
            "day",
        )
    meter = await sb.store.get(METER, METER_EVENT)
    if meter is None:
        raise conflict("stripe_not_synced", "the Stripe meter is not set up: run `tollway stripe sync`")
    cursor = Cursor.decode(await sb.store.state(CURSOR))
    if cursor < Cursor(end * 1_000_000 - 1, END):
        raise conflict(
            "meter_push_behind",
            f"usage of {day} is still being pushed to Stripe; reconcile once `tollway stripe status`"
            " shows the push past that day",
        )
    local = await local_totals(sb, day)
    linked = await sb.store.all(CUSTOMER)
    rows = []
    try:
        for cust in sorted(set(linked) | set(local)):
            scus, mine = local.get(cust, (linked.get(cust, ""), 0))
            theirs = await stripe_total(sb, meter, scus, day)
            drift = mine - theirs
            row: dict[str, Any] = {
                "customer_id": cust,
                "stripe_customer": scus,
                "local": mine,
                "stripe": theirs,
                "drift": drift,
                "fixed": False,
                "identifier": None,
            }
            if drift and fix:
                row["identifier"] = await _adjust(sb, day, scus, mine, theirs, end - 1)
                row["fixed"] = True
            rows.append(row)
    except stripe.StripeError as e:
        raise stripe_failed(e, "reconcile the meter") from e
    drifting = [r for r in rows if r["drift"]]
    return {
        "object": "stripe_reconciliation",
        "day": day.isoformat(),
        "unit": "milli-neuron",
        "meter": meter,
        "customers": len(rows),
        "drifting": len(drifting),
        "fixed": sum(1 for r in rows if r["fixed"]),
        "local_total": sum(r["local"] for r in rows),
        "stripe_total": sum(r["stripe"] for r in rows),
        "rows": rows,
    }


async def _adjust(sb: StripeBilling, day: dt.date, scus: str, mine: int, theirs: int, ts: int) -> str:
    """One meter event for the difference; retried on 429 (the meter push may be
    sending for the same customer at that moment) and 5xx."""
    ident = f"tollway-reconcile:{day.isoformat()}:{scus}:{mine}:{theirs}"
    for attempt in range(5):
        try:
            await sb.client.v1.billing.meter_events.create_async(
                {
                    "event_name": METER_EVENT,
                    "identifier": ident,
                    "payload": {"stripe_customer_id": scus, "value": str(mine - theirs)},
                    "timestamp": ts,
                },
                {"idempotency_key": ident, "max_network_retries": 0},
            )
            return ident
        except stripe.StripeError as e:
            status = e.http_status or 0
            if attempt == 4 or not (
                status == 429 or status >= 500 or isinstance(e, stripe.APIConnectionError)
            ):
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
