"""Accounts funded up to an amount: a day's free allocation, a period's
included usage or quota, a spend-limit budget.

:meth:`Allocations.ensure` creates the account on first use and credits it
from its source up to ``amount``; raising the amount later tops it up by the
difference (idempotently, so concurrent first requests, in any process, fund
it once). What an account was funded with is cached for the life of the
process until :meth:`forget`, so the request path reads nothing once warm.
"""

from __future__ import annotations

from tollway.core.errors import TollwayError
from tollway.ledger import Ledger


class Allocations:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._funded: dict[str, int] = {}  # account → amount known to be credited

    def forget(self) -> None:
        """Drop the cache (e.g. when a new day makes yesterday's accounts dead)."""
        self._funded = {}

    async def ensure(
        self, acct: str, kind: str, customer_id: str | None, amount: int, source: str, name: str
    ) -> str:
        if self._funded.get(acct, -1) >= amount:
            return acct
        try:
            await self.ledger.create_account(kind, id=acct, customer_id=customer_id, name=name)
        except TollwayError as e:
            if e.code != "account_exists":
                raise
        credited = (await self.ledger.get_account(acct)).credits_posted
        if credited < amount:
            try:
                await self.ledger.transfer(
                    source,
                    acct,
                    amount - credited,
                    description=name,
                    idempotency_key=f"fund:{acct}:{credited}:{amount}",
                )
            except TollwayError as e:
                if e.code != "idempotency_conflict":
                    raise
            credited = (await self.ledger.get_account(acct)).credits_posted  # another process may have won
        self._funded[acct] = max(credited, amount)
        return acct
