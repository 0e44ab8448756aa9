"""Usage: idempotent ingest, daily (UTC) rollups per customer, feature and
model, and anomaly flags.

Every charge already records a usage event in the same transaction as its
transfer; :func:`ingest` takes events from elsewhere (the operator's own
features), idempotent by event id. :func:`rollup_day` rebuilds one day's
rollups from the events in one transaction (so it can run any number of
times, from any process), then flags each customer's feature whose day is
above ``k`` x the median of its trailing days.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.billing.plans import FEATURE_KEY
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, invalid
from tollway.core.schema import customers as C
from tollway.core.schema import usage_events as U
from tollway.core.schema import usage_rollups as R
from tollway.core.storage import writer
from tollway.observe import metrics
from tollway.observe.alerts import USAGE_ANOMALY, raise_alert

log = logging.getLogger("tollway.billing")

MAX_BATCH = 10_000
_ID_MAX = 64


def day_bounds_us(day: dt.date) -> tuple[int, int]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    s = int(start.timestamp()) * 1_000_000
    return s, s + 86_400 * 1_000_000


def parse_day(text: str, param: str = "day") -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise invalid("invalid_day", f"{param} must be a date like 2026-11-23, not {text!r}", param) from None


_FIELDS = frozenset({"id", "feature", "quantity", "model", "timestamp_us", "metadata"})
_MAX_Q = 2**62


def _bad(i: int, field: str, why: str) -> TollwayError:
    where = f"events[{i}]"
    return invalid("invalid_event", f"{where}.{field} {why}", f"{where}.{field}")


def _event(e: Any, i: int, now_us: int) -> tuple[Any, ...]:
    """(id, feature, quantity, model, timestamp, metadata) of one valid event."""
    if type(e) is not dict:
        raise invalid("invalid_event", f"events[{i}] must be an object", f"events[{i}]")
    if not e.keys() <= _FIELDS:
        extra = sorted(set(e) - _FIELDS)[0]
        raise invalid("invalid_event", f"events[{i}]: unknown field {extra!r}", f"events[{i}]")
    eid = e.get("id")
    if type(eid) is not str or not 0 < len(eid) <= _ID_MAX:
        raise _bad(i, "id", f"must be a string of 1-{_ID_MAX} characters")
    feature = e.get("feature")
    if type(feature) is not str or not FEATURE_KEY.match(feature):
        raise _bad(i, "feature", "must be a lookup key (lowercase letters, digits, . _ : -)")
    q = e.get("quantity")
    if type(q) is not int or not 0 <= q <= _MAX_Q:
        raise _bad(i, "quantity", "must be a non-negative integer")
    model = e.get("model")
    if model is not None and (type(model) is not str or len(model) > 100):
        raise _bad(i, "model", "must be a string of at most 100 characters")
    ts = e.get("timestamp_us", now_us)
    if type(ts) is not int or not 0 < ts <= now_us + 300_000_000:
        raise _bad(i, "timestamp_us", "must be a time in microseconds, not in the future")
    meta = e.get("metadata")
    if meta is not None and type(meta) is not dict:
        raise _bad(i, "metadata", "must be an object")
    return eid, feature, q, model, ts, meta


async def ingest(engine: AsyncEngine, clock: Clock, customer_id: str, events: Any) -> dict[str, int]:
    """Record usage events of one customer; an id seen before is skipped (and
    counted as a duplicate). The whole batch is checked before anything is written."""
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH:
        raise invalid("invalid_events", f"events must be a list of 1-{MAX_BATCH} usage events", "events")
    now = clock.now_us()
    parsed = [_event(e, i, now) for i, e in enumerate(events)]
    async with engine.connect() as conn:
        r = (await conn.execute(select(C.c.account_id).where(C.c.id == customer_id))).first()
    if r is None:
        from tollway.core.errors import not_found

        raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
    account_id = r[0]
    by_id: dict[str, tuple[Any, ...]] = {}
    for p in parsed:
        by_id.setdefault(p[0], p)
    rows = [
        (
            eid,
            None,
            account_id,
            customer_id,
            f,
            q,
            0,
            orjson.dumps(meta).decode() if meta else "{}",
            ts,
            model,
        )
        for eid, f, q, model, ts, meta in by_id.values()
    ]
    async with writer(engine).begin() as conn:
        if conn.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(U).on_conflict_do_nothing(index_elements=[U.c.id]).returning(U.c.id)
            cols = [c.name for c in U.columns]
            recorded = len((await conn.execute(stmt, [dict(zip(cols, r, strict=True)) for r in rows])).all())
        else:  # one executemany through the driver; rowcount counts the rows inserted
            marks = ", ".join("?" * len(U.columns))
            names = ", ".join(c.name for c in U.columns)
            sql = f"INSERT OR IGNORE INTO usage_events ({names}) VALUES ({marks})"
            recorded = (await conn.exec_driver_sql(sql, rows)).rowcount
    return {"received": len(events), "recorded": recorded, "duplicates": len(events) - recorded}


def _day_name(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


async def rollup_day(
    engine: AsyncEngine, clock: Clock, day: dt.date, *, k: float = 3.0, trailing: int = 14
) -> int:
    """Rebuild ``day``'s rollups from its usage events and flag anomalies; returns the row count."""
    start, end = day_bounds_us(day)
    name = _day_name(day)
    now = clock.now_us()
    cust = func.coalesce(U.c.customer_id, literal(""))
    model = func.coalesce(U.c.model, literal(""))
    agg = (
        select(
            literal(name).label("day"),
            cust.label("customer_id"),
            U.c.meter.label("feature"),
            model.label("model"),
            func.count().label("events"),
            func.coalesce(func.sum(U.c.quantity), 0).label("quantity"),
            func.coalesce(func.sum(U.c.amount), 0).label("amount"),
            literal(0).label("anomaly"),
            literal(now).label("updated_at_us"),
        )
        .where(U.c.created_at_us >= start, U.c.created_at_us < end)
        .group_by(cust, U.c.meter, model)
    )
    cols = [
        "day",
        "customer_id",
        "feature",
        "model",
        "events",
        "quantity",
        "amount",
        "anomaly",
        "updated_at_us",
    ]
    async with writer(engine).begin() as conn:
        # What an earlier rebuild of this day already flagged: reported once, not per rebuild.
        seen = {
            (c, f)
            for c, f in await conn.execute(
                select(R.c.customer_id, R.c.feature).where(R.c.day == name, R.c.anomaly == 1).distinct()
            )
        }
        await conn.execute(delete(R).where(R.c.day == name))
        await conn.execute(insert(R).from_select(cols, agg))
        # Anomalies: per customer and feature, the day's total against the trailing days'.
        first = _day_name(day - dt.timedelta(days=trailing))
        totals: dict[tuple[str, str], dict[str, int]] = {}
        q = (
            select(R.c.customer_id, R.c.feature, R.c.day, func.sum(R.c.quantity))
            .where(R.c.day >= first, R.c.day <= name)
            .group_by(R.c.customer_id, R.c.feature, R.c.day)
        )
        for c, f, d, total in await conn.execute(q):
            totals.setdefault((c, f), {})[d] = int(total)
        flagged = []
        for (c, f), days in totals.items():
            today = days.get(name)
            past = [v for d, v in days.items() if d != name]
            if today is None or len(past) < 3:
                continue
            median = statistics.median(past)
            if today > k * median:
                flagged.append((c, f))
        for c, f in flagged:
            await conn.execute(
                update(R)
                .where(and_(R.c.day == name, R.c.customer_id == c, R.c.feature == f))
                .values(anomaly=1)
            )
        n = (await conn.execute(select(func.count()).select_from(R).where(R.c.day == name))).scalar_one()
        by_customer: dict[str, list[str]] = {}
        for c, f in flagged:
            by_customer.setdefault(c, []).append(f)
        for c, features in by_customer.items():  # an alert per customer-day, with the rollup
            payload = {"customer_id": c, "day": day.isoformat(), "features": sorted(features), "factor": k}
            await raise_alert(conn, now, USAGE_ANOMALY, c, payload, f"{USAGE_ANOMALY}:{c}:{name}")
    known = {c for c, _ in seen}
    new: dict[str, list[str]] = {}
    for c, f in flagged:
        if (c, f) not in seen:
            new.setdefault(c, []).append(f)
    for c, features in new.items():
        if c not in known:  # once per customer-day
            metrics.USAGE_ANOMALIES.inc()
        log.warning(
            "usage anomaly: customer %s %s on %s above %.1fx the trailing median",
            c,
            ", ".join(features),
            day,
            k,
        )
    return int(n)


async def rollups(
    engine: AsyncEngine,
    *,
    start: dt.date,
    end: dt.date,
    customer_id: str | None = None,
    anomalies_only: bool = False,
) -> list[dict[str, Any]]:
    q = select(R).where(R.c.day >= _day_name(start), R.c.day <= _day_name(end))
    if customer_id is not None:
        q = q.where(R.c.customer_id == customer_id)
    if anomalies_only:
        q = q.where(R.c.anomaly == 1)
    q = q.order_by(R.c.day, R.c.customer_id, R.c.feature, R.c.model)
    async with engine.connect() as conn:
        return [
            {
                "object": "usage_rollup",
                "day": dt.datetime.strptime(r.day, "%Y%m%d").date().isoformat(),
                "customer_id": r.customer_id or None,
                "feature": r.feature,
                "model": r.model or None,
                "events": r.events,
                "quantity": r.quantity,
                "amount": r.amount,
                "anomaly": bool(r.anomaly),
            }
            for r in await conn.execute(q)
        ]
