"""Spend limits for a key or a customer, per UTC day or month, as ledger limits.

Each budget is a :class:`~tollway.charge.limits.Limit`: a ``budget`` account
for that scope and period, funded from ``sys_budgets`` with the budget amount
on first use, that every charge reserves the call's maximum cost on,
alongside the payment itself, and posts what the call cost: the ledger's
balance check makes "spent + held ≤ budget" exact under any concurrency.  A
budget raised mid-period is topped up by the difference on the next request;
a lowered one applies from the next period.
"""

from __future__ import annotations

from tollway.charge.hold import Cap
from tollway.charge.limits import BUDGETS, Limit, LimitAccounts
from tollway.core.clock import Clock
from tollway.gateway.limits import Limits
from tollway.ledger import Ledger


class Budgets:
    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.limits = LimitAccounts(ledger, clock)

    def _budgets(
        self, scope: str, owner_id: str, customer_id: str | None, limits: Limits
    ) -> list[tuple[str, Limit]]:
        p = self.limits.periods()
        return [
            (
                period,
                Limit(
                    f"budget_{scope}_{owner_id}_{p[period]}",
                    amount,
                    f"{scope} {period} budget",
                    BUDGETS,
                    customer_id,
                ),
            )
            for period, amount in (("daily", limits.daily_budget), ("monthly", limits.monthly_budget))
            if amount
        ]

    async def caps(self, scope: str, owner_id: str, customer_id: str, limits: Limits) -> list[Cap]:
        """The budget accounts that apply to a call, funded and ready."""
        if not limits.any_budget:
            return []
        return [await self.limits.cap(b) for _, b in self._budgets(scope, owner_id, customer_id, limits)]

    async def status(self, scope: str, owner_id: str, limits: Limits) -> list[dict[str, object]]:
        """What is left of each budget this period (for the admin API)."""
        out: list[dict[str, object]] = []
        for period, b in self._budgets(scope, owner_id, None, limits):
            spent, held = await self.limits.used(b.account_id)
            out.append({"period": period, "budget": b.amount, "spent": spent, "held": held})
        return out
