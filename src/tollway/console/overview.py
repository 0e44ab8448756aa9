"""The overview's figures, from the hourly rollups only (tollway.console.rollups):
requests, tokens, cost and revenue (subscriptions, metered, x402) per hour,
by model and by customer. ``customer_id`` narrows everything to one customer
(the customer's own usage page)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.console.rollups import HOUR_US
from tollway.core.schema import console_requests_hourly as RH
from tollway.core.schema import console_revenue_hourly as VH

RANGES = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}
SOURCES = ("subscriptions", "metered", "x402")
TOP = 10


def window(now_us: int, range_: str) -> tuple[int, int]:
    """The first hour shown and the number of hours (the current one last)."""
    hours = RANGES[range_]
    return (now_us // HOUR_US - hours + 1) * HOUR_US, hours


async def overview(
    engine: AsyncEngine, now_us: int, range_: str = "24h", customer_id: str | None = None
) -> dict[str, Any]:
    since, hours = window(now_us, range_)
    hours_x = [since + i * HOUR_US for i in range(hours)]
    at = {h: i for i, h in enumerate(hours_x)}
    req = [RH.c.hour_us >= since]
    rev = [VH.c.hour_us >= since]
    if customer_id is not None:
        req.append(RH.c.customer_id == customer_id)
        rev.append(VH.c.customer_id == customer_id)
    totals = (
        func.sum(RH.c.requests),
        func.sum(RH.c.input_tokens + RH.c.output_tokens),
        func.sum(RH.c.cost),
        func.sum(RH.c.errors),
    )
    series: dict[str, list[int]] = {
        k: [0] * hours for k in ("requests", "tokens", "cost", "errors", *SOURCES)
    }
    async with engine.connect() as conn:
        for h, n, tok, cost, errs in await conn.execute(
            select(RH.c.hour_us, *totals).where(*req).group_by(RH.c.hour_us)
        ):
            i = at.get(h)
            if i is not None:
                series["requests"][i], series["tokens"][i] = int(n), int(tok)
                series["cost"][i], series["errors"][i] = int(cost), int(errs)
        q = (
            select(VH.c.hour_us, VH.c.source, func.sum(VH.c.amount))
            .where(*rev)
            .group_by(VH.c.hour_us, VH.c.source)
        )
        for h, source, amount in await conn.execute(q):
            i = at.get(h)
            if i is not None and source in series:
                series[source][i] = int(amount)
        by_model = [
            {"model": m or "(none)", "requests": int(n), "tokens": int(t), "cost": int(c), "errors": int(e)}
            for m, n, t, c, e in await conn.execute(
                select(RH.c.model, *totals)
                .where(*req)
                .group_by(RH.c.model)
                .order_by(func.sum(RH.c.requests).desc())
            )
        ]
        by_customer = [
            {
                "customer_id": c or "(none)",
                "requests": int(n),
                "tokens": int(t),
                "cost": int(v),
                "errors": int(e),
            }
            for c, n, t, v, e in await conn.execute(
                select(RH.c.customer_id, *totals)
                .where(*req)
                .group_by(RH.c.customer_id)
                .order_by(func.sum(RH.c.cost).desc())
                .limit(TOP)
            )
        ]
    revenue = {s: sum(series[s]) for s in SOURCES}
    return {
        "range": range_,
        "hours": [h // 1_000_000 for h in hours_x],  # seconds, for the charts
        "series": series,
        "totals": {
            "requests": sum(series["requests"]),
            "tokens": sum(series["tokens"]),
            "cost": sum(series["cost"]),
            "errors": sum(series["errors"]),
            "revenue": sum(revenue.values()),
            **{f"revenue_{s}": v for s, v in revenue.items()},
        },
        "by_model": by_model,
        "by_customer": by_customer if customer_id is None else [],
    }
