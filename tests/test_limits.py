"""The one limits mechanism (charge/limits.py): period names, funding once and
topping up, reservation as a cap; and the two small public pieces the wallets
use to re-attach a hold (Hold.attach) and read how it was resolved
(Ledger.resolution_of)."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tollway.charge import Payer
from tollway.charge.hold import Hold, Source
from tollway.charge.limits import BUDGETS, Limit, LimitAccounts, periods, since
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.ledger import TransferKind
from tollway.runtime import Runtime


def _us(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp()) * 1_000_000


def test_period_names_follow_the_utc_calendar() -> None:
    assert dict(periods(_us(2026, 11, 22, 23, 59))) == {
        "daily": "d20261122",
        "weekly": "w202647",
        "monthly": "m202611",
        "yearly": "y2026",
        "all_time": "all",
    }
    # ISO weeks cross years: 2027-01-01 is in 2026's week 53.
    assert periods(_us(2027, 1, 1))["weekly"] == "w202653"
    assert periods(_us(2027, 1, 1))["daily"] == "d20270101"
    assert since(_us(2026, 11, 1) + 999) == f"p{_us(2026, 11, 1) // 1_000_000}"


async def _customer(rt: Runtime, amount: int) -> Payer:
    c = await rt.customers.create("Ada")
    await rt.ledger.transfer("sys_funding", c.account_id, amount)
    return Payer(c.account_id, c.id)


async def test_a_limit_is_funded_once_topped_up_when_raised_and_reserved_as_a_cap(rt: Runtime) -> None:
    limits = LimitAccounts(rt.ledger, rt.clock)
    p = await _customer(rt, 10_000)
    lim = Limit("budget_test_a", 500, "test budget", BUDGETS, p.customer_id)
    caps = await asyncio.gather(*[limits.cap(lim) for _ in range(5)])  # concurrent first uses
    assert all(c == caps[0] for c in caps)
    assert (caps[0].account_id, caps[0].label, caps[0].payee, caps[0].code) == (
        "budget_test_a",
        "test budget",
        BUDGETS,
        "budget_exceeded",
    )
    a = await rt.ledger.get_account("budget_test_a")
    assert (a.kind, a.credits_posted, a.customer_id, a.name) == ("budget", 500, p.customer_id, "test budget")
    limits.funded.forget()  # another process: funds nothing twice
    await LimitAccounts(rt.ledger, rt.clock).cap(lim)
    assert (await rt.ledger.get_account("budget_test_a")).credits_posted == 500

    async with rt.charger.hold(Payer(p.account_id, p.customer_id, caps=(caps[0],)), 300, meter="t") as h:
        assert await limits.used("budget_test_a") == (0, 300)
        h.post(200)
    assert await limits.used("budget_test_a") == (200, 0)
    with pytest.raises(TollwayError) as e:
        async with rt.charger.hold(Payer(p.account_id, p.customer_id, caps=(caps[0],)), 301, meter="t"):
            pass
    assert e.value.code == "budget_exceeded"

    await limits.cap(Limit("budget_test_a", 800, "test budget", BUDGETS, p.customer_id))  # raised
    assert (await rt.ledger.get_account("budget_test_a")).credits_posted == 800
    assert await limits.used("budget_nobody") == (0, 0)


async def test_a_unit_limit_counts_its_units_with_its_own_refusal(rt: Runtime) -> None:
    limits = LimitAccounts(rt.ledger, rt.clock)
    p = await _customer(rt, 10_000)
    q = Limit("q_test", 2, "test quota", "sys_quotas", p.customer_id, "quota", units=1, code="quota_exceeded")
    cap = await limits.cap(q)
    payer = Payer(p.account_id, p.customer_id, caps=(cap,))
    for _ in range(2):
        async with rt.charger.hold(payer, 1_000, meter="t") as h:
            h.post(700)
    with pytest.raises(TollwayError) as e:
        async with rt.charger.hold(payer, 1, meter="t"):
            pass
    assert e.value.code == "quota_exceeded"
    assert await limits.used("q_test") == (2, 0)


async def test_a_new_utc_day_forgets_what_was_funded(rt: Runtime) -> None:
    clock = ManualClock(_us(2026, 11, 22, 23))
    limits = LimitAccounts(rt.ledger, clock)
    await limits.cap(Limit("budget_day", 5, "b"))
    assert limits.funded._funded
    clock.advance(seconds=3600)
    assert limits.new_day() and not limits.funded._funded


async def test_a_hold_reattached_to_its_legs_settles_and_the_ledger_says_how(rt: Runtime) -> None:
    p = await _customer(rt, 1_000)
    h = rt.charger.hold(p, 300, meter="t", payee="sys_revenue")
    await h.reserve()
    first = h.legs[0].pending.id
    assert await rt.ledger.resolution_of(first) is None  # still pending
    again = Hold.attach(rt.ledger, p, 300, list(h.legs), meter="t", payee="sys_revenue")
    assert again.pending is not None and again.pending.id == first
    receipt = await again.settle(120)
    assert (receipt.hold_id, receipt.charged) == (first, 120)
    r = await rt.ledger.resolution_of(first)
    assert r is not None and (r.kind, r.amount) == (TransferKind.POST_PENDING, 120)
    assert (await rt.ledger.get_account(p.account_id)).balance == 880

    h2 = rt.charger.hold(Payer(p.account_id, p.customer_id, (Source(p.account_id),)), 100, meter="t")
    await h2.reserve()
    await h2.release()
    r2 = await rt.ledger.resolution_of(h2.legs[0].pending.id)
    assert r2 is not None and r2.kind == TransferKind.VOID_PENDING
