"""Billing under concurrency, with random plans, grants and charges: the
ledger stays balanced, no source is overdrawn, quotas hold exactly, and every
micro-USD taken is accounted for by a usage event."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import settings_for
from tollway.core.errors import TollwayError
from tollway.core.migrate import upgrade
from tollway.runtime import Runtime

BOUNDED = {"customer", "free_allowance", "included", "credit", "quota", "budget"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    daily=st.integers(0, 3_000),
    included=st.integers(0, 3_000),
    grants=st.lists(st.tuples(st.integers(1, 2_000), st.integers(0, 100)), max_size=3),
    prepaid=st.integers(0, 5_000),
    quota=st.integers(0, 30),
    overage=st.booleans(),
    charges=st.lists(st.tuples(st.integers(1, 900), st.integers(0, 100)), min_size=1, max_size=40),
)
def test_concurrent_charges_keep_every_invariant(
    daily: int,
    included: int,
    grants: list[tuple[int, int]],
    prepaid: int,
    quota: int,
    overage: bool,
    charges: list[tuple[int, int]],
) -> None:
    asyncio.run(_run(daily, included, grants, prepaid, quota, overage, charges))


async def _run(
    daily: int,
    included: int,
    grants: list[tuple[int, int]],
    prepaid: int,
    quota: int,
    overage: bool,
    charges: list[tuple[int, int]],
) -> None:
    plan = {
        "lookup_key": "p",
        "daily_neurons": daily,
        "included_neurons": included,
        "included_requests": quota,
        "overage": overage,
        "usd_per_1000_neurons": "$1",  # 1 neuron = 1,000 micro-USD
    }
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime.build(
            settings_for(f"sqlite:///{Path(d) / 't.db'}", billing={"plans": [plan], "default_plan": "p"})
        )
        try:
            await upgrade(rt.engine)
            c = await rt.customers.create("Ada")
            if prepaid:
                await rt.ledger.transfer("sys_funding", c.account_id, prepaid)
            for amount, priority in grants:
                await rt.billing.credits.grant(c.id, amount, priority=priority)
            s = await rt.billing.standing_of(c.id)
            caps = await rt.billing.require(s, "requests")
            payer = await rt.billing.payer(s, c.account_id)

            async def charge(max_amount: int, pct: int) -> int:
                from dataclasses import replace

                hold = rt.charger.hold(replace(payer, caps=caps), max_amount, meter="neurons")
                try:
                    await hold.reserve()
                except TollwayError as e:
                    assert e.code in ("insufficient_funds", "quota_exceeded"), e.code
                    return -1
                actual = max_amount * pct // 100
                await hold.settle(actual, quantity=actual)
                return actual

            results = await asyncio.gather(*[charge(m, p) for m, p in charges])
            served = [r for r in results if r >= 0]
            accounts = await rt.ledger.accounts()
            assert sum(a.balance for a in accounts) == 0  # every transfer has two sides
            for a in accounts:
                assert a.debits_pending == 0 and a.credits_pending == 0, a
                if a.kind in BOUNDED:
                    assert a.balance >= 0, a
            if quota:
                assert len(served) <= quota
                q = next(a for a in accounts if a.kind == "quota")
                assert q.debits_posted == len(served)
            funded = daily * 1000 + included * 1000 + sum(g for g, _ in grants) + prepaid
            if not overage:
                assert sum(served) <= funded
            events = [e for e in await _usage(rt) if e[0] == "neurons"]
            assert len(events) == len(served) and sum(e[1] for e in events) == sum(served)
            taken = sum(a.debits_posted for a in accounts if a.customer_id == c.id and a.kind != "quota")
            assert taken == sum(served)
        finally:
            await rt.close()


async def _usage(rt: Runtime) -> list[tuple[str, int]]:
    from sqlalchemy import select

    from tollway.core.schema import usage_events as U

    async with rt.engine.connect() as conn:
        return [(m, int(a)) for m, a in await conn.execute(select(U.c.meter, U.c.amount))]
