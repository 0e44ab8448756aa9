"""A daily free allocation as a ledger funding source.

Each customer gets one ``free_allowance`` account per UTC day, created on
first use and granted the plan's daily amount in micro-USD from ``sys_grants``
(:class:`~tollway.charge.allocation.Allocations`: concurrent first requests
grant once).  Usage drawn from it is
paid back to ``sys_grants``, so it never counts as revenue; what is left at
00:00 UTC simply stays in yesterday's account — the new day starts fresh.
"""

from __future__ import annotations

import datetime as dt

from tollway.charge.allocation import Allocations
from tollway.charge.hold import Payer, Source
from tollway.core.clock import Clock
from tollway.ledger import Ledger

GRANTS = "sys_grants"


_DAY_US = 86_400_000_000
_day_cache: tuple[int, str] = (-1, "")  # (start of the cached UTC day in µs, its name)


def utc_day(now_us: int) -> str:
    """``YYYYMMDD`` of the UTC day holding ``now_us`` (cached: it is on every charge)."""
    global _day_cache
    start = now_us - now_us % _DAY_US
    if start != _day_cache[0]:
        _day_cache = (start, dt.datetime.fromtimestamp(start / 1_000_000, dt.UTC).strftime("%Y%m%d"))
    return _day_cache[1]


class DailyAllowance:
    def __init__(self, ledger: Ledger, clock: Clock, amount: int) -> None:
        self.ledger = ledger
        self.clock = clock
        self.amount = amount  # the default; a plan may grant another amount
        self.funded = Allocations(ledger)
        self._day = ""

    def account_id(self, customer_id: str, day: str | None = None) -> str:
        return f"free_{customer_id}_{day or utc_day(self.clock.now_us())}"

    async def ensure(self, customer_id: str, amount: int | None = None) -> str:
        """Today's allowance account, created and granted on first use."""
        day = utc_day(self.clock.now_us())
        if day != self._day:  # a new UTC day: forget yesterday's accounts
            self._day = day
            self.funded.forget()
        amount = self.amount if amount is None else amount
        return await self.funded.ensure(
            self.account_id(customer_id, day),
            "free_allowance",
            customer_id,
            amount,
            GRANTS,
            "daily free allocation",
        )

    async def remaining(self, customer_id: str, amount: int | None = None) -> int:
        if not (self.amount if amount is None else amount):
            return 0
        return (await self.ledger.get_account(await self.ensure(customer_id, amount))).available

    async def payer(self, customer_id: str, prepaid_account_id: str) -> Payer:
        """Free allocation first, then prepaid credit."""
        sources = [Source(prepaid_account_id)]
        if self.amount:
            sources.insert(0, Source(await self.ensure(customer_id), payee=GRANTS))
        return Payer(prepaid_account_id, customer_id, tuple(sources))
