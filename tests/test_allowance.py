"""The daily free allocation and neuron pricing."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.charge.allowance import DailyAllowance, utc_day
from tollway.core.clock import ManualClock
from tollway.core.money import price_micros
from tollway.inference.config import ModelConfig
from tollway.inference.metering import milli_neurons
from tollway.runtime import Runtime
from tollway.settings import Settings


def test_neurons_and_price_are_exact() -> None:
    m = ModelConfig(
        name="m", task="chat", backend="llama_cpp", neurons_per_m_input=2457, neurons_per_m_output=18252
    )
    assert milli_neurons(m, 1_000_000, 1_000_000) == (2457 + 18252) * 1000
    assert milli_neurons(m, 50, 100) == 1949  # 1.94805 neurons, rounded up to the milli-neuron
    # $0.011 per 1,000 neurons = 11,000 micro-USD per 1,000 neurons
    assert price_micros(10_000_000, 11_000) == 110_000  # 10,000 neurons = $0.11
    assert price_micros(1949, 11_000) == 22  # 21.439 micro-USD, rounded up
    assert price_micros(0, 11_000) == 0


def test_utc_day() -> None:
    assert utc_day(1_700_000_000_000_000) == "20231114"


@given(st.integers(min_value=0, max_value=4_000_000_000_000_000))
def test_utc_day_cache_matches_the_calendar(now_us: int) -> None:
    expect = dt.datetime.fromtimestamp(now_us / 1_000_000, dt.UTC).strftime("%Y%m%d")
    assert utc_day(now_us) == expect
    assert utc_day(now_us - now_us % 86_400_000_000 - 1) != expect or now_us < 86_400_000_000


async def test_grant_once_per_day_and_reset(settings: Settings) -> None:
    clock = ManualClock(1_700_000_000_000_000)  # 2023-11-14 22:13 UTC
    rt = Runtime.build(settings, clock=clock)
    try:
        c = await rt.customers.create("Ada")
        a = DailyAllowance(rt.ledger, clock, 110_000)
        ids = await asyncio.gather(*[a.ensure(c.id) for _ in range(5)])
        assert len(set(ids)) == 1
        assert await a.remaining(c.id) == 110_000
        await rt.ledger.transfer(ids[0], "sys_grants", 100_000)
        assert await a.remaining(c.id) == 10_000
        clock.advance(seconds=2 * 3600)  # past 00:00 UTC
        assert await a.remaining(c.id) == 110_000
        assert (await rt.ledger.get_account("sys_grants")).balance == -120_000
    finally:
        await rt.close()


@pytest.mark.parametrize("amount", [0])
async def test_zero_allowance_means_prepaid_only(rt: Runtime, amount: int) -> None:
    c = await rt.customers.create("Ada")
    a = DailyAllowance(rt.ledger, rt.clock, amount)
    payer = await a.payer(c.id, c.account_id)
    assert [s.account_id for s in payer.funding()] == [c.account_id]
