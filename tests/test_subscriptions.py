"""Local subscriptions (no Stripe): periods, proration, renewals, downgrades,
cancellations and credit expiry, on a clock the test moves."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import settings_for
from tollway.billing.periods import add_months, period_at, to_us
from tollway.billing.subscriptions import proration
from tollway.core.clock import ManualClock
from tollway.runtime import Runtime

PLANS = [
    {"lookup_key": "free", "features": ["*"]},
    {"lookup_key": "pro", "price": "$10", "features": ["*"]},
    {"lookup_key": "max", "price": "$30", "features": ["*"]},
    {"lookup_key": "trial", "price": "$5", "trial_days": 14, "features": ["*"]},
]
T0 = to_us(dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC))


@pytest.fixture
async def rt(db_url: str) -> AsyncIterator[Runtime]:
    clock = ManualClock(T0)
    runtime = Runtime.build(settings_for(db_url, billing={"plans": PLANS}), clock=clock)
    yield runtime
    await runtime.close()


def clock(rt: Runtime) -> ManualClock:
    assert isinstance(rt.clock, ManualClock)
    return rt.clock


async def customer(rt: Runtime, credit: int) -> tuple[str, str]:
    c = await rt.customers.create("Ada")
    if credit:
        await rt.ledger.transfer("sys_funding", c.account_id, credit)
    return c.id, c.account_id


def test_periods_follow_the_anchor_day_clamped_to_the_month() -> None:
    jan31 = T0
    assert dt.datetime.fromtimestamp(add_months(jan31, 1) / 1e6, dt.UTC).date() == dt.date(2026, 2, 28)
    assert dt.datetime.fromtimestamp(add_months(jan31, 2) / 1e6, dt.UTC).date() == dt.date(2026, 3, 31)
    start, end = period_at(jan31, to_us(dt.datetime(2026, 3, 1, tzinfo=dt.UTC)))
    assert (start, end) == (add_months(jan31, 1), add_months(jan31, 2))


@given(st.integers(0, 2_000_000_000_000_000), st.integers(0, 4_000_000_000_000_000))
def test_period_at_always_holds_now(anchor: int, now: int) -> None:
    start, end = period_at(anchor, now)
    assert start <= now < end


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 10**12), st.integers(0, 10**12))
def test_proration_is_exact_and_bounded(old: int, new: int, length: int, at: int) -> None:
    due = proration(old, new, 0, length, at)
    if new <= old or at >= length:
        assert due == 0
    else:
        assert 0 < due <= new - old
        assert due * length >= (new - old) * (length - at) > (due - 1) * length


async def test_upgrade_prorates_now_downgrade_waits_and_renewal_charges(rt: Runtime) -> None:
    cid, acct = await customer(rt, 100_000_000)
    subs = rt.billing.subscriptions
    s = await subs.subscribe(cid, "pro")
    assert (s.plan, s.status) == ("pro", "active")
    assert (await rt.ledger.get_account(acct)).balance == 90_000_000
    length = s.period_end_us - s.period_start_us
    clock(rt).advance(us=length // 2)
    s = await subs.subscribe(cid, "max")  # half the period left: half of $20
    assert s.plan == "max"
    assert (await rt.ledger.get_account(acct)).balance == 90_000_000 - 10_000_000
    s = await subs.subscribe(cid, "pro")  # a downgrade waits for the period's end
    assert (s.plan, s.pending_plan) == ("max", "pro")
    assert (await rt.ledger.get_account(acct)).balance == 80_000_000
    clock(rt).advance(us=length // 2 + 1)
    assert await subs.renew_due() == 1
    s = await subs.get(cid)
    assert (s.plan, s.status, s.pending_plan) == ("pro", "active", None)
    assert (await rt.ledger.get_account(acct)).balance == 70_000_000
    assert await subs.renew_due() == 0  # once per period
    assert (await rt.ledger.get_account(acct)).balance == 70_000_000


async def test_a_renewal_the_balance_cannot_pay_is_past_due(rt: Runtime) -> None:
    cid, _ = await customer(rt, 10_000_000)
    subs = rt.billing.subscriptions
    s = await subs.subscribe(cid, "pro")
    clock(rt).advance(us=s.period_end_us - rt.clock.now_us())
    await subs.renew_due()
    s = await subs.get(cid)
    assert s.status == "past_due"
    st_ = await rt.billing.standing_of(cid)
    assert not st_.live and st_.plan.lookup_key == "pro"


async def test_trial_then_cancel_at_period_end(rt: Runtime) -> None:
    cid, acct = await customer(rt, 5_000_000)
    subs = rt.billing.subscriptions
    s = await subs.subscribe(cid, "trial")
    assert s.status == "trialing" and s.trial_end_us == T0 + 14 * 86_400_000_000
    assert (await rt.ledger.get_account(acct)).balance == 5_000_000  # nothing charged in a trial
    clock(rt).advance(seconds=14 * 86_400)
    await subs.renew_due()
    s = await subs.get(cid)
    assert s.status == "active" and (await rt.ledger.get_account(acct)).balance == 0
    s = await subs.cancel(cid)
    assert s.cancel_at_period_end
    clock(rt).advance(us=s.period_end_us - rt.clock.now_us())
    await subs.renew_due()
    s = await subs.get(cid)
    assert s.status == "canceled"
    assert (await rt.billing.standing_of(cid)).plan.lookup_key == "free"


async def test_expired_credit_goes_back_once(rt: Runtime) -> None:
    cid, _ = await customer(rt, 0)
    g = await rt.billing.credits.grant(cid, 5_000, expires_at_us=T0 + 1_000_000)
    await rt.ledger.transfer(g.account_id, "sys_revenue", 1_000)  # some of it was used
    grants_before = (await rt.ledger.get_account("sys_grants")).balance
    clock(rt).advance(seconds=2)
    assert await rt.billing.credits.expire_due() == 1
    assert await rt.billing.credits.expire_due() == 0
    assert (await rt.ledger.get_account(g.account_id)).balance == 0
    assert (await rt.ledger.get_account("sys_grants")).balance == grants_before + 4_000
    s = await rt.billing.standing_of(cid)
    payer = await rt.billing.payer(s, "acct")
    assert g.account_id not in [src.account_id for src in payer.funding()]
