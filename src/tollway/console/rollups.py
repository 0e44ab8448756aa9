"""The console's rollups, kept from the request log, the usage events and the
subscription charges, so the overview reads a few thousand rows, never the
request log:

- per hour, customer and model (a customer's own views);
- per hour and model (the overview's series and by-model, the gateway page),
  and per UTC day and customer (the overview's by-customer, the customer list),
  both from the first;
- revenue per hour and source (subscriptions, metered, x402).

:func:`refresh` rebuilds the hours from the last rolled-up hour on (rows are
written up to a flush late, so the last hour is always rebuilt; the daily
rollup, from that hour's day), in one transaction: delete those hours, insert
them again from an aggregate over the rows since (both sources are indexed by
time). Subscription charges are plain
ledger transfers to revenue: they are added once each, from the last one
rolled up (the ledger's credit index, by id), the mark moved in the same
transaction. On PostgreSQL a transaction-scoped advisory lock runs one refresh
at a time (SQLite has one writer), so two processes refreshing at once add
each charge once; the mark's compare-and-set checks it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.core.schema import console_customers_daily as CD
from tollway.core.schema import console_models_hourly as MH
from tollway.core.schema import console_requests_hourly as RH
from tollway.core.schema import console_revenue_hourly as VH
from tollway.core.schema import console_state as ST
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import request_log as L
from tollway.core.schema import usage_events as U
from tollway.core.storage import writer

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
SUBSCRIPTIONS_MARK = "subscriptions_after"  # the last subscription transfer rolled up
ROLLED_MARK = "rolled_through_us"  # the request log and usage events are rolled up to here
STEP_US = 24 * 3_600_000_000  # the most one transaction rolls up
LATE_US = 2 * 3_600_000_000  # each refresh rebuilds the hours this far before the mark
REVENUE_ACCOUNT = "sys_revenue"
SUBSCRIPTION_PREFIX = "subscription:"
_LOCK = 0x746F6C6C636F6E73  # the refresh's advisory lock (PostgreSQL)
METERS = {"neurons": "metered", "x402": "x402"}  # usage meter -> revenue source


def _hour(col: Any) -> Any:
    return (col // HOUR_US) * HOUR_US


def _count_if(cond: Any) -> Any:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


MEASURES = [c.name for c in RH.columns if c.name not in ("hour_us", "customer_id", "model")]


async def _mark(conn: AsyncConnection, name: str) -> str | None:
    v = (await conn.execute(select(ST.c.value).where(ST.c.name == name))).scalar()
    return None if v is None else str(v)


async def _set_mark(conn: AsyncConnection, name: str, old: str | None, new: str) -> None:
    """Move a mark (compare-and-set: the advisory lock makes a lost race impossible; this checks it)."""
    if old is None:
        await conn.execute(insert(ST).values(name=name, value=new))
        return
    moved = await conn.execute(update(ST).where(ST.c.name == name, ST.c.value == old).values(value=new))
    if moved.rowcount != 1:
        raise RuntimeError(f"another process moved the console's {name} mark")


async def _first_hour(conn: AsyncConnection) -> int | None:
    """Where rolling up starts: the oldest row's hour (None: nothing yet)."""
    firsts = [
        (await conn.execute(select(func.min(L.c.created_at_us)))).scalar(),
        (await conn.execute(select(func.min(U.c.created_at_us)).where(U.c.meter.in_(list(METERS))))).scalar(),
    ]
    known = [int(f) for f in firsts if f is not None]
    return min(known) // HOUR_US * HOUR_US if known else None


async def _requests(conn: AsyncConnection, since: int, until: int) -> None:
    """Per hour, customer and model, from the request log."""
    cust = func.coalesce(L.c.customer_id, literal(""))
    model = func.coalesce(L.c.model, literal(""))
    hour = _hour(L.c.created_at_us)
    agg = (
        select(
            hour,
            cust,
            model,
            func.count(),
            _count_if(L.c.status >= 400),
            func.coalesce(func.sum(L.c.input_tokens), 0),
            func.coalesce(func.sum(L.c.output_tokens), 0),
            func.coalesce(func.sum(L.c.cost), 0),
            _count_if(L.c.cache == "HIT"),
            func.coalesce(func.sum(L.c.latency_ms), 0),
            _count_if(L.c.status == 429),
            _count_if(L.c.error_code == "budget_exceeded"),
        )
        .where(L.c.created_at_us >= since, L.c.created_at_us < until)
        .group_by(hour, cust, model)
    )
    await conn.execute(delete(RH).where(RH.c.hour_us >= since, RH.c.hour_us < until))
    await conn.execute(insert(RH).from_select(["hour_us", "customer_id", "model", *MEASURES], agg))


async def _coarser(conn: AsyncConnection, since: int, until: int) -> None:
    """Per hour and model, and per day and customer, from the finest rollup."""
    sums = [func.sum(RH.c[m]) for m in MEASURES]
    await conn.execute(delete(MH).where(MH.c.hour_us >= since, MH.c.hour_us < until))
    by_model = select(RH.c.hour_us, RH.c.model, *sums).where(RH.c.hour_us >= since, RH.c.hour_us < until)
    await conn.execute(
        insert(MH).from_select(["hour_us", "model", *MEASURES], by_model.group_by(RH.c.hour_us, RH.c.model))
    )
    first_day, end_day = since // DAY_US * DAY_US, (until - 1) // DAY_US * DAY_US + DAY_US
    day = (RH.c.hour_us // DAY_US) * DAY_US
    await conn.execute(delete(CD).where(CD.c.day_us >= first_day, CD.c.day_us < end_day))
    by_customer = select(day, RH.c.customer_id, *sums).where(
        RH.c.hour_us >= first_day, RH.c.hour_us < end_day
    )
    await conn.execute(
        insert(CD).from_select(
            ["day_us", "customer_id", *MEASURES], by_customer.group_by(day, RH.c.customer_id)
        )
    )


async def _usage_revenue(conn: AsyncConnection, since: int, until: int) -> None:
    hour = _hour(U.c.created_at_us)
    source = case(*((U.c.meter == m, literal(s)) for m, s in METERS.items()))
    agg = (
        select(hour, source, func.count(), func.coalesce(func.sum(U.c.amount), 0))
        .where(U.c.created_at_us >= since, U.c.created_at_us < until, U.c.meter.in_(list(METERS)))
        .group_by(hour, source)
    )
    await conn.execute(
        delete(VH).where(VH.c.hour_us >= since, VH.c.hour_us < until, VH.c.source != "subscriptions")
    )
    await conn.execute(insert(VH).from_select(["hour_us", "source", "events", "amount"], agg))


async def _subscriptions(conn: AsyncConnection) -> None:
    mark = await _mark(conn, SUBSCRIPTIONS_MARK)
    q = (
        select(T.c.id, T.c.created_at_us, T.c.amount)
        .where(
            T.c.credit_account_id == REVENUE_ACCOUNT,
            T.c.id > (mark or ""),
            T.c.description.like(SUBSCRIPTION_PREFIX + "%"),
            T.c.amount > 0,
        )
        .order_by(T.c.id)
    )
    rows = (await conn.execute(q)).all()
    if not rows:
        return
    await _set_mark(conn, SUBSCRIPTIONS_MARK, mark, rows[-1][0])
    sums: dict[int, list[int]] = {}
    for _, at, amount in rows:
        s = sums.setdefault(at // HOUR_US * HOUR_US, [0, 0])
        s[0] += 1
        s[1] += int(amount)
    for hour, (n, amount) in sums.items():
        key = and_(VH.c.hour_us == hour, VH.c.source == "subscriptions")
        up = await conn.execute(
            update(VH).where(key).values(events=VH.c.events + n, amount=VH.c.amount + amount)
        )
        if up.rowcount == 0:
            await conn.execute(
                insert(VH).values(hour_us=hour, source="subscriptions", events=n, amount=amount)
            )


async def _step(engine: AsyncEngine, now_us: int) -> bool:
    """Roll up one window (at most :data:`STEP_US`) from the mark on, in one
    transaction; True when caught up with ``now_us``."""
    async with writer(engine).begin() as conn:
        if conn.dialect.name == "postgresql":  # one refresh at a time (SQLite: one writer anyway)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        mark = await _mark(conn, ROLLED_MARK)
        if mark is None:
            first = await _first_hour(conn)
            since = now_us // HOUR_US * HOUR_US if first is None else first
        else:  # the last hours again: a row is written when its request ends (a long stream: later)
            since = int(mark) // HOUR_US * HOUR_US - LATE_US
        until = min(since + STEP_US, now_us // HOUR_US * HOUR_US + HOUR_US)
        await _requests(conn, since, until)
        await _coarser(conn, since, until)
        await _usage_revenue(conn, since, until)
        await _set_mark(conn, ROLLED_MARK, mark, str(min(until, now_us)))
        done = until > now_us
        if done:
            await _subscriptions(conn)
    return done


async def refresh(engine: AsyncEngine, now_us: int) -> None:
    """Bring the rollups up to ``now_us`` (any number of times, from any process):
    a day per transaction, so a first roll-up of a long log never holds the
    database's writer for long."""
    while not await _step(engine, now_us):
        pass
