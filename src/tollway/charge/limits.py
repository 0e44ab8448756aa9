"""Limits: a limit is a funded ledger account, reserved as a cap in the same batch.

Every face limits spending the same way: a named ``budget`` (or ``quota``)
account per scope and period is funded with the limit from a system source
(:class:`~tollway.charge.allocation.Allocations`: once, idempotently, topped
up if the limit is raised), and each charge reserves its amount (or its
units) there as a :class:`~tollway.charge.hold.Cap`, alongside the payment.
The ledger's balance check then makes "used + held ≤ limit" exact under any
concurrency, in any number of processes. The gateway's spend budgets, the
plans' quotas, the wallets' spending limits and the agents' session budgets
are all :class:`Limit`\\ s.

A period is part of the account's name (:func:`periods`: ``d20260101``,
``w202601``, ``m202601``, ``y2026``, ``all``; :func:`since` for a period that
starts at a given time, such as a billing period), so a new period is a new
account and what is left in the old one stays there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tollway.charge.allocation import Allocations
from tollway.charge.hold import Cap
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.ledger import Ledger

BUDGETS = "sys_budgets"  # funds spend budgets (the gateway's, agent sessions')

_DAY_US = 86_400_000_000
_periods: tuple[int, Mapping[str, str]] = (-1, {})  # (the cached UTC day's start in µs, its periods)


def periods(now_us: int) -> Mapping[str, str]:
    """The name of each calendar period (UTC) holding ``now_us``, by interval:
    ``daily``, ``weekly`` (ISO), ``monthly``, ``yearly``, ``all_time``
    (cached for the day: it is on the request path)."""
    global _periods
    start = now_us - now_us % _DAY_US
    if start != _periods[0]:
        d = dt.datetime.fromtimestamp(start / 1_000_000, dt.UTC)
        iso = d.isocalendar()
        names = {
            "daily": d.strftime("d%Y%m%d"),
            "weekly": f"w{iso.year}{iso.week:02d}",
            "monthly": d.strftime("m%Y%m"),
            "yearly": d.strftime("y%Y"),
            "all_time": "all",
        }
        _periods = (start, names)
    return _periods[1]


def since(start_us: int) -> str:
    """The name of a period that starts at ``start_us`` (a billing period)."""
    return f"p{start_us // 1_000_000}"


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: its account (scope and period are in the id), the amount it
    is funded with, and how a charge reserves it and a refusal names it."""

    account_id: str
    amount: int  # micro-USD, or units when ``units`` is set
    label: str  # what a refusal names, e.g. "key daily budget"
    source: str = BUDGETS  # funds the account; what is spent goes back to it
    customer_id: str | None = None
    kind: str = "budget"  # the ledger account's kind
    name: str = ""  # the account's name (default: the label)
    units: int | None = None  # see Cap.units: None takes the charge's whole amount
    code: str = "budget_exceeded"  # the refusal's code
    hint: str = ""  # what to do about a refusal

    def cap(self) -> Cap:
        return Cap(self.account_id, self.label, self.source, self.units, self.code, self.hint)


class LimitAccounts:
    """Funds limits' accounts and hands back their caps. What is funded is
    cached (forgotten when the UTC day changes, so dead periods' accounts do
    not pile up): a warm limit costs no I/O."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.funded = Allocations(ledger)
        self._day = -1

    def periods(self) -> Mapping[str, str]:
        """The current periods' names (see :func:`periods`)."""
        return periods(self.clock.now_us())

    def new_day(self) -> bool:
        """Forget what was funded if the UTC day changed since the last call (True then)."""
        day = self.clock.now_us() // _DAY_US
        if day == self._day:
            return False
        self._day = day
        self.funded.forget()
        return True

    async def fund(self, limit: Limit) -> str:
        """Create the limit's account if need be, funded up to its amount."""
        self.new_day()
        return await self.funded.ensure(
            limit.account_id,
            limit.kind,
            limit.customer_id,
            limit.amount,
            limit.source,
            limit.name or limit.label,
        )

    async def cap(self, limit: Limit) -> Cap:
        """The limit as a cap for a hold, its account funded and ready."""
        await self.fund(limit)
        return limit.cap()

    async def caps(self, limits: Iterable[Limit]) -> tuple[Cap, ...]:
        return tuple([await self.cap(lim) for lim in limits])

    async def used(self, account_id: str) -> tuple[int, int]:
        """(spent, held) on a limit's account; (0, 0) before its first use."""
        try:
            a = await self.ledger.get_account(account_id)
        except TollwayError:
            return 0, 0
        return a.debits_posted, a.debits_pending
