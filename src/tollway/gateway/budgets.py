"""Spend limits as ledger accounts, so concurrent requests can never overshoot.

Each budget (a key's or a customer's, per UTC day or month) is a ``budget``
account for that period, funded from ``sys_budgets`` with the budget amount
on first use.  Every charge reserves the call's maximum cost on each budget
that applies, alongside the payment itself (:class:`~tollway.charge.hold.Cap`),
and posts what the call cost: the ledger's balance check makes "spent + held
≤ budget" exact under any concurrency.  A budget raised mid-period is topped
up by the difference on the next request; a lowered one applies from the
next period.
"""

from __future__ import annotations

import datetime as dt

from tollway.charge.allocation import Allocations
from tollway.charge.hold import Cap
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.gateway.limits import Limits
from tollway.ledger import Ledger

SOURCE = "sys_budgets"


class Budgets:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.funded = Allocations(ledger)
        self._day = ""

    def periods(self) -> tuple[str, str]:
        d = dt.datetime.fromtimestamp(self.clock.now_us() / 1_000_000, dt.UTC)
        return d.strftime("%Y%m%d"), d.strftime("%Y%m")

    async def caps(self, scope: str, owner_id: str, customer_id: str, limits: Limits) -> list[Cap]:
        """The budget accounts that apply to a call, funded and ready."""
        if not limits.any_budget:
            return []
        day, month = self.periods()
        if day != self._day:  # a new day: forget accounts of past periods
            self._day = day
            self.funded.forget()
        out = []
        for label, period, amount in (
            ("daily", "d" + day, limits.daily_budget),
            ("monthly", "m" + month, limits.monthly_budget),
        ):
            if amount:
                acct = f"budget_{scope}_{owner_id}_{period}"
                await self.funded.ensure(
                    acct, "budget", customer_id, amount, SOURCE, f"{scope} {label} budget"
                )
                out.append(Cap(acct, f"{scope} {label} budget", SOURCE))
        return out

    async def status(self, scope: str, owner_id: str, limits: Limits) -> list[dict[str, object]]:
        """What is left of each budget this period (for the admin API)."""
        day, month = self.periods()
        out: list[dict[str, object]] = []
        for label, period, amount in (
            ("daily", "d" + day, limits.daily_budget),
            ("monthly", "m" + month, limits.monthly_budget),
        ):
            if not amount:
                continue
            try:
                a = await self.ledger.get_account(f"budget_{scope}_{owner_id}_{period}")
                spent, held = a.debits_posted, a.debits_pending
            except TollwayError:
                spent = held = 0
            out.append({"period": label, "budget": amount, "spent": spent, "held": held})
        return out
