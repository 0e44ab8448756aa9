"""The meter push: usage events to Stripe's ``tollway_neurons`` meter, once
each, in order, and nothing lost when Stripe is down or the process dies."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stripe_standin import StripeStandIn
from stripe_support import App, Customer, funded, link, stripe_settings, use
from tollway.billing.stripe.meter import MeterPusher, Retry
from tollway.billing.stripe.units import billable_mneurons, cents_per_mneuron
from tollway.core.clock import ManualClock
from tollway.core.schema import usage_events as U
from tollway.runtime import Runtime


def pusher(rt: Runtime) -> MeterPusher:
    assert rt.stripe is not None
    return rt.stripe.pusher()


async def ready(app: App, standin: StripeStandIn, n: int = 1) -> list[tuple[Customer, str]]:
    """Synced, with ``n`` customers linked to Stripe customers."""
    assert app.rt.stripe is not None
    await app.rt.stripe.sync()
    out = []
    for i in range(n):
        c = await app.customer(f"c{i}")
        out.append((c, await link(app.rt, c, standin)))
    return out


async def created_s(rt: Runtime, ids: list[str]) -> dict[str, int]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(select(U.c.id, U.c.created_at_us).where(U.c.id.in_(ids)))
        return {i: t // 1_000_000 for i, t in rows}


async def test_usage_of_linked_customers_reaches_the_meter_once(app: App, standin: StripeStandIn) -> None:
    [(ada, cus)] = await ready(app, standin)
    bo = await app.customer("Bo")  # not linked to Stripe: not pushed
    ids = [await use(app.rt, ada, q) for q in (1234, 1, 999_999)]
    await use(app.rt, bo, 5000)
    assert await pusher(app.rt).drain() == 3
    got = {i: e for i, e in standin.meter_events.items()}
    assert set(got) == set(ids)
    when = await created_s(app.rt, ids)
    for i, q in zip(ids, (1234, 1, 999_999), strict=True):
        e = got[i]
        assert (e.event_name, e.customer, e.value, e.timestamp, e.via) == (
            "tollway_neurons",
            cus,
            q,
            when[i],
            "v1",
        )
    calls = standin.calls("POST", "/v1/billing/meter_events")
    assert [c.headers["idempotency-key"] for c in calls] == [f"tollway-meter-{i}" for i in ids]
    # The cursor passed them: a second drain sends nothing.
    assert await pusher(app.rt).drain() == 0
    assert len(standin.calls("POST", "/v1/billing/meter_events")) == 3
    status = await pusher(app.rt).status()
    assert status["backlog"] == 0 and status["rejected"] == 0


async def test_young_events_wait_for_the_lag(db_url: str, standin: StripeStandIn) -> None:
    rt = Runtime.build(stripe_settings(db_url, meter_lag_seconds=3600))
    try:
        assert rt.stripe is not None
        await rt.stripe.sync()
        ada = await App(rt, None).customer_direct() if False else None
        from tollway.identity.customers import Customers

        c = await Customers(rt.engine).create("Ada")
        await rt.ledger.transfer("sys_funding", c.account_id, 10**9)
        ada = Customer(c.id, c.account_id, "")
        await link(rt, ada, standin)
        await use(rt, ada, 100)
        assert await pusher(rt).drain() == 0
        assert standin.meter_events == {} and (await pusher(rt).status())["backlog"] == 1
    finally:
        await rt.close()


async def test_stripe_down_loses_nothing(app: App, standin: StripeStandIn) -> None:
    [(ada, _)] = await ready(app, standin)
    ids = [await use(app.rt, ada, 10 + i) for i in range(5)]
    standin.fail(503)
    p = pusher(app.rt)
    delay = await p.push_once()
    assert delay > 0 and p.stats.failures == 1
    assert standin.meter_events == {}
    assert (await p.status())["backlog"] == 5
    assert await p.push_once() > 0  # still down: still waiting, still nothing lost
    standin.heal()
    assert await p.drain() == 5
    assert set(standin.meter_events) == set(ids)
    assert all(n == 1 for n in standin.meter_receipts.values())


async def test_a_429_waits_as_long_as_stripe_says(app: App, standin: StripeStandIn) -> None:
    [(ada, _)] = await ready(app, standin)
    await use(app.rt, ada, 10)
    standin.fail(429, times=1, retry_after=7, path="/v1/billing/meter_events")
    p = pusher(app.rt)
    assert await p.push_once() >= 7
    assert "429" in p.stats.last_error
    with pytest.raises(Retry):  # drain reports a failing round rather than spinning
        standin.fail(500, times=1, path="/v1/billing/meter_events")
        await p.drain()
    assert await p.drain() == 1


async def test_a_failure_mid_batch_resumes_where_it_stopped(app: App, standin: StripeStandIn) -> None:
    [(ada, _)] = await ready(app, standin)
    ids = [await use(app.rt, ada, 100 + i) for i in range(10)]
    standin.fail(503, times=1, after=4, path="/v1/billing/meter_events")
    p = pusher(app.rt)
    assert await p.push_once() > 0
    assert set(standin.meter_events) == set(ids[:4])  # in order, up to the failure
    assert (await p.status())["backlog"] == 6
    await p.drain()
    assert set(standin.meter_events) == set(ids)
    assert sum(e.value for e in standin.meter_events.values()) == sum(range(100, 110))


async def test_one_call_at_a_time_per_customer_customers_side_by_side(
    app: App, standin: StripeStandIn
) -> None:
    linked = await ready(app, standin, n=5)
    standin.meter_delay_s = 0.01
    ids = [await use(app.rt, c, 7) for c, _ in linked for _ in range(6)]
    assert await pusher(app.rt).drain() == 30
    assert standin.concurrency_violations == []
    assert standin.max_in_flight > 1  # different customers did overlap
    assert set(standin.meter_events) == set(ids)
    # Each customer's events went in order.
    by_customer: dict[str, list[str]] = {}
    for c in standin.calls("POST", "/v1/billing/meter_events"):
        by_customer.setdefault(c.params["payload"]["stripe_customer_id"], []).append(c.params["identifier"])
    assert all(v == sorted(v) for v in by_customer.values())


async def test_the_v2_meter_event_stream(db_url: str, standin: StripeStandIn) -> None:
    rt = Runtime.build(stripe_settings(db_url, meter_event_stream=True))
    try:
        assert rt.stripe is not None
        await rt.stripe.sync()
        ada = await funded(rt)
        cus = await link(rt, ada, standin)
        ids = [await use(rt, ada, 1 + i) for i in range(250)]
        assert await pusher(rt).drain() == 250
        streams = standin.calls("POST", "/v2/billing/meter_event_stream")
        assert [len(s.params["events"]) for s in streams] == [100, 100, 50]
        assert len(standin.calls("POST", "/v2/billing/meter_event_session")) == 1
        assert standin.calls("POST", "/v1/billing/meter_events") == []
        assert all(e.via == "v2" and e.customer == cus for e in standin.meter_events.values())
        assert set(standin.meter_events) == set(ids)
        # An expired session is renewed, and the events go through.
        standin.expire_sessions()
        more = await use(rt, ada, 5)
        assert await pusher(rt).drain() == 1
        assert more in standin.meter_events
        assert len(standin.calls("POST", "/v2/billing/meter_event_session")) == 2
    finally:
        await rt.close()


async def test_events_older_than_stripe_takes_are_skipped_and_counted(
    db_url: str, standin: StripeStandIn
) -> None:
    clock = ManualClock(int(time.time() * 1e6) - 40 * 86_400_000_000)
    rt = Runtime.build(stripe_settings(db_url), clock=clock)
    try:
        assert rt.stripe is not None
        await rt.stripe.sync()
        ada = await funded(rt)
        await link(rt, ada, standin)
        old = await use(rt, ada, 10)  # 40 days ago
        clock.advance(40 * 86_400)
        new = await use(rt, ada, 20)
        clock.advance(1)  # the push takes what is older than now
        p = pusher(rt)
        assert await p.drain() == 1
        assert set(standin.meter_events) == {new} and old not in standin.meter_events
        assert (await p.status())["rejected"] == 1
    finally:
        await rt.close()


async def test_nothing_is_pushed_before_sync(app: App, standin: StripeStandIn) -> None:
    ada = await app.customer()
    await link(app.rt, ada, standin)
    await use(app.rt, ada, 10)
    assert await pusher(app.rt).push_once() > 0
    assert standin.calls("POST", "/v1/billing/meter_events") == []


async def test_one_process_pushes_at_a_time(app: App, standin: StripeStandIn, db_url: str) -> None:
    [(ada, _)] = await ready(app, standin)
    await use(app.rt, ada, 10)
    other = Runtime.build(stripe_settings(db_url, meter_push_interval_seconds=30))
    try:
        assert other.stripe is not None
        theirs = other.stripe.pusher()
        assert await pusher(app.rt).push_once() >= 0  # takes the lease, pushes
        await use(app.rt, ada, 20)
        assert await theirs.push_once() == theirs.interval_s  # the lease is held: nothing sent
        assert len(standin.meter_events) == 1
    finally:
        await other.close()


async def test_overage_share_is_what_the_meter_bills(app: App, standin: StripeStandIn) -> None:
    """With the overage (micro-USD invoiced) in the usage metadata, the meter
    gets that share of the event's neurons."""
    [(ada, _)] = await ready(app, standin)
    a = await use(app.rt, ada, 1_000_000, overage=11_000)  # all of it overage (1,000 neurons = $0.011)
    b = await use(app.rt, ada, 1_000_000, overage=0)  # all of it included: nothing to bill
    c = await use(app.rt, ada, 1_000_000, overage=2_750)  # a quarter
    await pusher(app.rt).drain()
    assert {i: e.value for i, e in standin.meter_events.items()} == {a: 1_000_000, c: 250_000}
    assert b not in standin.meter_events


def test_units() -> None:
    assert cents_per_mneuron(11_000) == "0.0000011"  # $0.011 per 1,000 neurons
    assert cents_per_mneuron(1) == "0.0000000001"
    assert cents_per_mneuron(20_000_000) == "0.002"
    assert billable_mneurons(500, 6, {}) == 500
    assert billable_mneurons(500, 6, {"overage": 6}) == 500
    assert billable_mneurons(500, 6, {"overage": 0}) == 0
    assert billable_mneurons(500, 6, {"overage": 3}) == 250
    assert billable_mneurons(3, 3, {"overage": 1}) == 1


# ------------------------------------------------------------------ kill -9


@pytest.mark.slow
async def test_kill_9_with_events_queued_then_restart_delivers_each_once(
    db_url: str, standin: StripeStandIn, tmp_path: Path
) -> None:
    from test_durability import Server

    rt = Runtime.build(stripe_settings(db_url))
    await rt.migrate()
    assert rt.stripe is not None
    await rt.stripe.sync()
    customers = [await funded(rt, f"c{i}") for i in range(3)]
    for c in customers:
        await link(rt, c, standin)

    cfg = tmp_path / "tollway.toml"
    lines = [
        f'[database]\nurl = "{db_url}"\nsqlite_synchronous = "FULL"',
        # A lag of 1 s, not 0: the events are written by this process while the server pushes,
        # and with no lag a round can move the cursor past an event stamped but not yet committed.
        '[billing]\ndefault_plan = "free"\nmeter_lag_seconds = 1\nmeter_push_interval_seconds = 0.05',
    ]
    for p in stripe_settings(db_url).billing.plans:
        lines.append("[[billing.plans]]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in p.model_dump().items())
    cfg.write_text("\n".join(lines) + "\n")
    server = Server(cfg, tmp_path / "server.log")
    expected: dict[str, int] = {}

    async def wait_for(pred: Any, what: str) -> None:
        deadline = time.monotonic() + 120  # liveness only: nothing here is timed
        while not pred():
            assert server.proc is not None and server.proc.poll() is None, server.tail()
            assert time.monotonic() < deadline, f"waited too long for {what}:\n{server.tail()}"
            await asyncio.sleep(0.02)

    try:
        # 1. Stripe is down: the server keeps trying, events queue; kill -9.
        standin.fail(503, path="/v1/billing/meter_events")
        await server.start()
        for i in range(120):
            c = customers[i % 3]
            expected[await use(rt, c, 1000 + i)] = 1000 + i
        await wait_for(lambda: len(standin.calls("POST", "/v1/billing/meter_events")) >= 3, "push attempts")
        server.kill()
        assert standin.meter_events == {}

        # 2. Stripe is back but slow; more usage; kill -9 in the middle of the push.
        standin.heal()
        standin.meter_delay_s = 0.01
        for i in range(120, 300):
            c = customers[i % 3]
            expected[await use(rt, c, 1000 + i)] = 1000 + i
        await server.start()
        await wait_for(lambda: len(standin.meter_events) >= 40, "some events to arrive")
        server.kill()
        assert len(standin.meter_events) < len(expected)

        # 3. Restart: everything drains, each event counted once, with its value.
        standin.meter_delay_s = 0.0
        await server.start()
        await wait_for(lambda: len(standin.meter_events) >= len(expected), "every event")
        server.kill()
    finally:
        server.kill()
        await rt.close()
    assert set(standin.meter_events) == set(expected)
    assert {i: e.value for i, e in standin.meter_events.items()} == expected
    assert standin.concurrency_violations == []
    # Re-sent after a crash, an event keeps its identifier (and idempotency key): Stripe counts it once.
    for ident, n in standin.meter_receipts.items():
        assert n >= 1 and ident in expected


async def test_a_refusal_that_no_retry_fixes_waits_loudly(
    app: App, standin: StripeStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4xx that says tollway is misconfigured (here: the meter is gone) keeps
    the events and waits the longest back-off, logging an error each time."""
    [(ada, _)] = await ready(app, standin)
    await use(app.rt, ada, 10)
    standin.fail(404, path="/v1/billing/meter_events")
    p = pusher(app.rt)
    assert await p.push_once() == 60.0
    assert any(r.levelname == "ERROR" and "404" in r.getMessage() for r in caplog.records)
    with pytest.raises(Retry):
        await p.drain()
    assert (await p.status())["backlog"] == 1
    standin.heal()
    assert await p.drain() == 1
