"""Usage rollups from the usage events the charge path records."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.schema import usage_events as U


def day_bounds_us(day: dt.date) -> tuple[int, int]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    s = int(start.timestamp()) * 1_000_000
    return s, s + 86_400 * 1_000_000


async def rollup(engine: AsyncEngine, day: dt.date, customer_id: str | None = None) -> list[dict[str, Any]]:
    """Per customer and model: requests, tokens, neurons and micro-USD charged."""
    start, end = day_bounds_us(day)
    q = select(U.c.customer_id, U.c.quantity, U.c.amount, U.c.metadata).where(
        U.c.meter == "neurons", U.c.created_at_us >= start, U.c.created_at_us < end
    )
    if customer_id is not None:
        q = q.where(U.c.customer_id == customer_id)
    acc: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "input_tokens": 0, "output_tokens": 0, "mneurons": 0, "charged": 0}
    )
    async with engine.connect() as conn:
        for cust, qty, amount, meta in await conn.execute(q):
            m = json.loads(meta)
            row = acc[(cust or "", m.get("model", "?"))]
            row["requests"] += 1
            row["input_tokens"] += int(m.get("input_tokens") or 0)
            row["output_tokens"] += int(m.get("output_tokens") or 0)
            row["mneurons"] += int(qty)
            row["charged"] += int(amount)
    return [
        {"customer_id": c, "model": model, **v, "neurons": v["mneurons"] / 1000}
        for (c, model), v in sorted(acc.items())
    ]
