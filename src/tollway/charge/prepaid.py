"""What a request paid for up front used.

An x402 ``upto`` payment authorizes a maximum before the request runs and
settles what the request was metered at. The paywall opens a :class:`Tab` for
the request (a context variable, set in the context its request task runs in,
so every task the request starts inherits it); each model call made for a
prepaid caller adds its metered cost (micro-USD) to it when it settles. No
ledger money moves here: the payment is the charge.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class Tab:
    amount: int = 0  # micro-USD, the sum of the calls' metered costs
    calls: int = 0


_TAB: ContextVar[Tab | None] = ContextVar("tollway_prepaid_tab", default=None)


def use(tab: Tab) -> None:
    """Book the calls of the current context (and of the tasks it starts) on ``tab``."""
    _TAB.set(tab)


def add(amount: int) -> None:
    """Book one call's metered cost on the open tab, if there is one."""
    tab = _TAB.get()
    if tab is not None:
        tab.amount += amount
        tab.calls += 1
