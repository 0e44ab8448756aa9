"""``tollway stripe reconcile``: a past UTC day's usage against Stripe's meter
event summaries; drift reported, and fixed once."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stripe_standin import MeterEvent, StripeStandIn
from stripe_support import Customer, funded, link, stripe_settings, use
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.runtime import Runtime

DAY_US = 86_400_000_000


class Yesterday:
    """Usage made yesterday (UTC), pushed, with the clock back at now."""

    def __init__(self, rt: Runtime, clock: ManualClock, day: dt.date) -> None:
        self.rt, self.clock, self.day = rt, clock, day
        self.customers: list[tuple[Customer, str]] = []
        self.usage: dict[str, int] = {}


@pytest.fixture
async def yday(db_url: str, standin: StripeStandIn) -> AsyncIterator[Yesterday]:
    now = int(time.time() * 1e6)
    today = now - now % DAY_US
    clock = ManualClock(today - DAY_US + 3_600_000_000)  # yesterday, 01:00 UTC
    rt = Runtime.build(stripe_settings(db_url), clock=clock)
    assert rt.stripe is not None
    y = Yesterday(rt, clock, dt.datetime.fromtimestamp((today - DAY_US) / 1e6, dt.UTC).date())
    try:
        await rt.stripe.sync()
        for name in ("ada", "bo"):
            c = await funded(rt, name)
            y.customers.append((c, await link(rt, c, standin)))
        for i in range(6):
            c, _ = y.customers[i % 2]
            y.usage[await use(rt, c, 1000 * (i + 1))] = 1000 * (i + 1)
            clock.advance(60)
        clock._now = now  # back to now: the push passes the whole of yesterday
        assert await rt.stripe.pusher().drain() == 6
        yield y
    finally:
        await rt.close()


async def test_no_drift_changes_nothing(yday: Yesterday, standin: StripeStandIn) -> None:
    assert yday.rt.stripe is not None
    posts = len(standin.calls("POST", "/v1/billing/meter_events"))
    r = await yday.rt.stripe.reconcile(yday.day)
    assert (r["customers"], r["drifting"], r["fixed"]) == (2, 0, 0)
    assert r["local_total"] == r["stripe_total"] == sum(yday.usage.values())
    assert len(standin.calls("POST", "/v1/billing/meter_events")) == posts
    [ada, bo] = [x for x in r["rows"]]
    assert {ada["local"], bo["local"]} == {1000 + 3000 + 5000, 2000 + 4000 + 6000}
    summary = standin.calls("GET", "/v1/billing/meters/{id}/event_summaries")[0].params
    start = int(dt.datetime(yday.day.year, yday.day.month, yday.day.day, tzinfo=dt.UTC).timestamp())
    assert summary["start_time"] == str(start) and summary["end_time"] == str(start + 86_400)


async def test_drift_is_fixed_once(yday: Yesterday, standin: StripeStandIn) -> None:
    assert yday.rt.stripe is not None
    (ada, ada_cus), (bo, bo_cus) = yday.customers
    # Stripe lost one of Ada's events, and counted a stray one for Bo.
    lost = next(i for i, e in standin.meter_events.items() if e.customer == ada_cus)
    lost_value = standin.meter_events.pop(lost).value
    stray_ts = next(e.timestamp for e in standin.meter_events.values() if e.customer == bo_cus)
    standin.meter_events["stray"] = MeterEvent("stray", "tollway_neurons", bo_cus, 777, stray_ts, "v1")

    dry = await yday.rt.stripe.reconcile(yday.day, fix=False)
    assert dry["drifting"] == 2 and dry["fixed"] == 0
    assert {r["customer_id"]: r["drift"] for r in dry["rows"]} == {ada.id: lost_value, bo.id: -777}

    posts = len(standin.calls("POST", "/v1/billing/meter_events"))
    r = await yday.rt.stripe.reconcile(yday.day)
    assert r["fixed"] == 2
    fixes = standin.calls("POST", "/v1/billing/meter_events")[posts:]
    assert sorted(int(f.params["payload"]["value"]) for f in fixes) == sorted([lost_value, -777])
    start = int(dt.datetime(yday.day.year, yday.day.month, yday.day.day, tzinfo=dt.UTC).timestamp())
    assert all(int(f.params["timestamp"]) == start + 86_399 for f in fixes)  # inside the day
    # Fixed: Stripe's totals now agree, and another run sends nothing.
    again = await yday.rt.stripe.reconcile(yday.day)
    assert again["drifting"] == 0 and again["local_total"] == again["stripe_total"]
    assert len(standin.calls("POST", "/v1/billing/meter_events")) == posts + 2


async def test_a_fix_stripe_has_not_counted_yet_is_not_sent_twice(
    yday: Yesterday, standin: StripeStandIn
) -> None:
    """Stripe aggregates meter events later: a second run before it has sees the
    same drift, and sends the same identifier, which Stripe takes once."""
    assert yday.rt.stripe is not None
    ada_cus = yday.customers[0][1]
    lost = next(i for i, e in standin.meter_events.items() if e.customer == ada_cus)
    standin.meter_events.pop(lost)
    first = await yday.rt.stripe.reconcile(yday.day)
    [ident] = [r["identifier"] for r in first["rows"] if r["fixed"]]
    standin.uncounted.add(ident)  # received, not aggregated yet
    second = await yday.rt.stripe.reconcile(yday.day)
    assert [r["identifier"] for r in second["rows"] if r["fixed"]] == [ident]
    sent = [c for c in standin.calls("POST", "/v1/billing/meter_events") if c.params["identifier"] == ident]
    assert len(sent) == 2 and {c.headers["idempotency-key"] for c in sent} == {ident}
    assert standin.meter_receipts[ident] == 1 and ident in standin.meter_events  # taken once
    standin.uncounted.clear()
    assert (await yday.rt.stripe.reconcile(yday.day))["drifting"] == 0


async def test_what_cannot_be_reconciled_yet(yday: Yesterday, standin: StripeStandIn) -> None:
    assert yday.rt.stripe is not None
    today = dt.datetime.fromtimestamp(yday.clock.now_us() / 1e6, dt.UTC).date()
    with pytest.raises(TollwayError) as e:
        await yday.rt.stripe.reconcile(today)
    assert e.value.code == "day_not_over"
    with pytest.raises(TollwayError) as e:
        await yday.rt.stripe.reconcile(today - dt.timedelta(days=40))
    assert e.value.code == "day_too_old"
    r = await yday.rt.stripe.reconcile(today - dt.timedelta(days=40), fix=False)  # a report is fine
    assert r["local_total"] == 0
    # The push has not passed the day (Stripe was down): reconcile waits for it.
    from tollway.billing.stripe.meter import CURSOR

    await yday.rt.stripe.store.set_state(CURSOR, "0:")
    with pytest.raises(TollwayError) as e:
        await yday.rt.stripe.reconcile(yday.day)
    assert e.value.code == "meter_push_behind"


def test_cli_reconcile_json(yday: Yesterday, db_url: str, tmp_path: Path) -> None:
    from tollway.cli.main import app

    cfg = tmp_path / "tollway.toml"
    cfg.write_text(f'[database]\nurl = "{db_url}"\nsqlite_synchronous = "NORMAL"\n')
    runner = CliRunner()
    r = runner.invoke(app, ["--config", str(cfg), "stripe", "reconcile", "--day", str(yday.day), "--json"])
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    assert out["object"] == "stripe_reconciliation" and out["drifting"] == 0 and out["customers"] == 2
    r = runner.invoke(app, ["--config", str(cfg), "stripe", "reconcile", "--day", "yesterday", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["error"]["code"] == "invalid_day"
    r = runner.invoke(app, ["--config", str(cfg), "stripe", "status", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["backlog"] == 0
