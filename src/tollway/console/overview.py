"""The overview's figures, from the rollups only (tollway.console.rollups):
requests, tokens, cost and revenue (subscriptions, metered, x402) per hour,
by model and by customer. ``customer_id`` narrows it to one customer's usage
and cost (their own page), from the per-customer hourly rollup.

Ranges: the last 24 hours; or the last 7 or 30 UTC days (from the first day's
start, so the by-customer table reads the daily rollup exactly)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.console.rollups import DAY_US, HOUR_US
from tollway.core.schema import console_customers_daily as CD
from tollway.core.schema import console_models_hourly as MH
from tollway.core.schema import console_requests_hourly as RH
from tollway.core.schema import console_revenue_hourly as VH

RANGES = {"24h": 0, "7d": 7, "30d": 30}  # days (0: the last 24 hours)
SOURCES = ("subscriptions", "metered", "x402")
TOP = 10


def window(now_us: int, range_: str) -> tuple[int, int]:
    """The first hour shown and the number of hours (the current one last)."""
    this_hour = now_us // HOUR_US * HOUR_US
    days = RANGES[range_]
    since = this_hour - 23 * HOUR_US if days == 0 else (now_us // DAY_US - days + 1) * DAY_US
    return since, (this_hour - since) // HOUR_US + 1


def _totals(t: Table) -> tuple[Any, ...]:
    return (
        func.sum(t.c.requests),
        func.sum(t.c.input_tokens + t.c.output_tokens),
        func.sum(t.c.cost),
        func.sum(t.c.errors),
    )


def _rows(key: str, rows: Any) -> list[dict[str, Any]]:
    return [
        {key: k or "(none)", "requests": int(n), "tokens": int(t), "cost": int(c), "errors": int(e)}
        for k, n, t, c, e in rows
    ]


async def overview(
    engine: AsyncEngine, now_us: int, range_: str = "24h", customer_id: str | None = None
) -> dict[str, Any]:
    since, hours = window(now_us, range_)
    hours_x = [since + i * HOUR_US for i in range(hours)]
    at = {h: i for i, h in enumerate(hours_x)}
    series: dict[str, list[int]] = {
        k: [0] * hours for k in ("requests", "tokens", "cost", "errors", *SOURCES)
    }
    if customer_id is None:  # every customer: per hour and model
        t, cond = MH, [MH.c.hour_us >= since]
    else:  # one customer: per hour, customer and model
        t, cond = RH, [RH.c.hour_us >= since, RH.c.customer_id == customer_id]
    by_customer: list[dict[str, Any]] = []
    async with engine.connect() as conn:
        q = select(t.c.hour_us, *_totals(t)).where(*cond).group_by(t.c.hour_us)
        for h, n, tok, cost, errs in await conn.execute(q):
            i = at.get(h)
            if i is not None:
                series["requests"][i], series["tokens"][i] = int(n), int(tok)
                series["cost"][i], series["errors"][i] = int(cost), int(errs)
        q = select(t.c.model, *_totals(t)).where(*cond).group_by(t.c.model)
        by_model = _rows("model", await conn.execute(q.order_by(func.sum(t.c.requests).desc())))
        if customer_id is None:
            q = select(VH.c.hour_us, VH.c.source, func.sum(VH.c.amount))
            for h, source, amount in await conn.execute(
                q.where(VH.c.hour_us >= since).group_by(VH.c.hour_us, VH.c.source)
            ):
                i = at.get(h)
                if i is not None and source in series:
                    series[source][i] = int(amount)
            c = RH if RANGES[range_] == 0 else CD  # the last 24 hours, or whole days
            first = RH.c.hour_us if c is RH else CD.c.day_us
            q = (
                select(c.c.customer_id, *_totals(c))
                .where(first >= since)
                .group_by(c.c.customer_id)
                .order_by(func.sum(c.c.cost).desc())
                .limit(TOP)
            )
            by_customer = _rows("customer_id", await conn.execute(q))
    revenue = {s: sum(series[s]) for s in SOURCES}
    return {
        "range": range_,
        "hours": [h // 1_000_000 for h in hours_x],  # seconds, for the charts
        "series": series,
        "revenue": customer_id is None,  # revenue is the operator's figure
        "totals": {
            "requests": sum(series["requests"]),
            "tokens": sum(series["tokens"]),
            "cost": sum(series["cost"]),
            "errors": sum(series["errors"]),
            "revenue": sum(revenue.values()),
            **{f"revenue_{s}": v for s, v in revenue.items()},
        },
        "by_model": by_model,
        "by_customer": by_customer,
    }
