"""Wallets' profit and loss for the console (tollway.wallets.pnl): the same
figures as ``GET /admin/wallets/{id}/pnl``, over a period (this month by default)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tollway.runtime import Runtime
from tollway.wallets.pnl import month_of, pnl
from tollway.wallets.store import Wallet


def iso_day(us: int) -> str:
    """A period's bound as the ISO 8601 date or time ``period()`` reads back."""
    d = dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC)
    return (
        d.strftime("%Y-%m-%d") if d == d.replace(hour=0, minute=0, second=0, microsecond=0) else d.isoformat()
    )


async def wallet(rt: Runtime, w: Wallet, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
    """One wallet's P&L with each live deployment's share (400 for a bad period)."""
    p = await pnl(
        rt.engine, w.id, w.account_id, rt.settings.provision.apps_domain, rt.clock.now_us(), from_, to
    )
    return {
        **p,
        "owner": w.owner,
        "customer_id": w.customer_id,
        "from": iso_day(p["from_us"]),
        "to": iso_day(p["to_us"]),
    }


async def this_month(rt: Runtime) -> list[dict[str, Any]]:
    """Every wallet's P&L for the current UTC month (the period stated, so a link reads it back)."""
    start, end = month_of(rt.clock.now_us())
    f, t = iso_day(start), iso_day(end)
    return [await wallet(rt, w, f, t) for w in await rt.wallets.all()]
