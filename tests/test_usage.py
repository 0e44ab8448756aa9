"""Usage events: idempotent ingest, daily rollups per customer, feature and
model, anomaly flags, and the invoice preview's view of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import ADMIN, settings_for
from tollway.api.app import create_app
from tollway.billing import usage as U
from tollway.billing.periods import to_us
from tollway.core.clock import ManualClock
from tollway.ledger.store import metadata_json
from tollway.observe import metrics
from tollway.runtime import Runtime

DAY = dt.date(2026, 11, 20)
T0 = to_us(dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC))


@pytest.fixture
async def rt(db_url: str) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(settings_for(db_url), clock=ManualClock(T0))
    yield runtime
    await runtime.close()


def ev(
    i: int, feature: str = "reports", q: int = 1, model: str | None = None, ts: int = T0
) -> dict[str, object]:
    e: dict[str, object] = {"id": f"e{i}", "feature": feature, "quantity": q, "timestamp_us": ts}
    if model:
        e["model"] = model
    return e


async def test_ingest_is_idempotent_by_event_id_and_rolls_up(rt: Runtime) -> None:
    c = await rt.customers.create("Ada")
    batch = [ev(i, q=i, model="m1" if i % 2 else "m2") for i in range(100)]
    r1, r2 = await asyncio.gather(
        U.ingest(rt.engine, rt.clock, c.id, batch), U.ingest(rt.engine, rt.clock, c.id, batch)
    )
    assert r1["recorded"] + r2["recorded"] == 100
    r3 = await U.ingest(rt.engine, rt.clock, c.id, [*batch[:10], ev(100, q=7)])
    assert (r3["recorded"], r3["duplicates"]) == (1, 10)
    for _ in range(2):  # rebuilding a day gives the same rows
        assert await U.rollup_day(rt.engine, rt.clock, DAY) == 3  # models m1, m2 and none
    rows = await U.rollups(rt.engine, start=DAY, end=DAY, customer_id=c.id)
    by_model = {r["model"]: r for r in rows}
    assert by_model["m1"]["events"] == 50 and by_model["m1"]["quantity"] == sum(range(1, 100, 2))
    assert by_model["m2"]["events"] == 50 and by_model["m2"]["quantity"] == sum(range(0, 100, 2))
    assert by_model[None]["events"] == 1 and by_model[None]["quantity"] == 7
    assert all(r["feature"] == "reports" and not r["anomaly"] for r in rows)


async def test_a_bad_event_refuses_the_whole_batch(rt: Runtime) -> None:
    c = await rt.customers.create("Ada")
    for bad in (
        {"id": "x", "feature": "reports", "quantity": -1},
        {"id": "x", "feature": "Bad Feature", "quantity": 1},
        {"id": "", "feature": "reports", "quantity": 1},
        {"id": "x", "feature": "reports", "quantity": 1.5},
        {"id": "x", "feature": "reports", "quantity": 1, "timestamp_us": T0 + 3600 * 10**6},
        {"id": "x", "feature": "reports", "quantity": 1, "colour": "red"},
    ):
        with pytest.raises(Exception) as info:
            await U.ingest(rt.engine, rt.clock, c.id, [ev(1), bad])
        assert getattr(info.value, "code", "") == "invalid_event", bad
    await U.rollup_day(rt.engine, rt.clock, DAY)
    assert await U.rollups(rt.engine, start=DAY, end=DAY) == []


async def test_a_day_above_k_times_the_trailing_median_is_flagged(rt: Runtime) -> None:
    c = await rt.customers.create("Ada")
    events = []
    for back, q in enumerate([10, 12, 9, 11, 10], start=1):
        ts = T0 - back * 86_400_000_000
        events.append(ev(back, q=q, ts=ts))
    events.append(ev(0, q=31, ts=T0))  # 31 > 3 x median(10, 12, 9, 11, 10) = 30
    await U.ingest(rt.engine, rt.clock, c.id, events)
    for back in range(5, -1, -1):
        await U.rollup_day(rt.engine, rt.clock, DAY - dt.timedelta(days=back))
    flagged = await U.rollups(rt.engine, start=DAY - dt.timedelta(days=10), end=DAY, anomalies_only=True)
    assert [(r["day"], r["quantity"]) for r in flagged] == [(DAY.isoformat(), 31)]


async def test_an_anomaly_is_reported_once_per_customer_day_not_per_rebuild(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """The billing tick rebuilds today's rollups every few minutes: 10 warnings in 15 minutes."""
    c = await rt.customers.create("Ada")
    past = [ev(back, q=10, ts=T0 - back * 86_400_000_000) for back in range(1, 5)]
    await U.ingest(rt.engine, rt.clock, c.id, [*past, ev(0, q=31, ts=T0)])
    for back in range(4, 0, -1):
        await U.rollup_day(rt.engine, rt.clock, DAY - dt.timedelta(days=back))
    before = metrics.USAGE_ANOMALIES._value.get()
    with caplog.at_level(logging.WARNING, logger="tollway"):
        for _ in range(5):
            await U.rollup_day(rt.engine, rt.clock, DAY)
            await U.ingest(rt.engine, rt.clock, c.id, [ev(100 + _, q=1, ts=T0)])  # still growing
    assert metrics.USAGE_ANOMALIES._value.get() == before + 1
    assert len([r for r in caplog.records if "usage anomaly" in r.getMessage()]) == 1


async def test_usage_over_http_and_bad_input(rt: Runtime) -> None:
    app = create_app(rt=rt)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        c = (await http.post("/admin/customers", json={"name": "Ada"}, headers=ADMIN)).json()
        key = (await http.post("/admin/keys", json={"customer_id": c["id"]}, headers=ADMIN)).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        r = await http.post("/v1/usage/events", json={"events": [ev(1), ev(2)]}, headers=auth)
        assert r.status_code == 200 and r.json()["recorded"] == 2, r.text
        r = await http.post("/v1/usage/events", json={"events": [ev(1)]}, headers=auth)
        assert r.json()["duplicates"] == 1
        for body in ({"events": []}, {"events": "x"}, {}, {"events": [ev(3)], "more": 1}):
            r = await http.post("/v1/usage/events", json=body, headers=auth)
            assert r.status_code == 400 and "error" in r.json(), (body, r.text)
        r = await http.post(f"/admin/usage/rollups/{DAY.isoformat()}", headers=ADMIN)
        assert r.status_code == 200 and r.json()["rows"] == 1
        r = await http.post("/admin/usage/rollups/2026-13-01", headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_day"
        rows = (await http.get("/v1/usage/rollups", params={"start": "2026-11-01"}, headers=auth)).json()[
            "data"
        ]
        assert [(r["feature"], r["quantity"]) for r in rows] == [("reports", 2)]
        r = await http.get(
            "/admin/usage/rollups", params={"start": "2026-11-21", "end": "2026-11-20"}, headers=ADMIN
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_range"
        pv = (await http.get("/v1/billing/preview", headers=auth)).json()
        assert pv["plan"] == "free" and pv["lines"] == [] and pv["total"] == 0
        assert [u["feature"] for u in pv["usage"]["by_feature"]] == ["reports"]


@pytest.mark.parametrize(
    "meta",
    [
        {"model": "m", "input_tokens": 12, "cached": False, "trace_id": None, "nested": {"a": [1, 2]}},
        {"big": 2**70},  # past 64 bits: orjson refuses, the json module writes it
        {"text": "hi \ud800"},  # a lone surrogate: likewise
        {1: "not a string key"},
        {"naïve": "café ☕"},
    ],
)
def test_usage_metadata_is_stored_as_json_whatever_it_holds(meta: dict[Any, Any]) -> None:
    stored = metadata_json(meta)
    assert json.loads(stored) == {str(k): v for k, v in meta.items()}
