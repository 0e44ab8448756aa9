"""An early reservation (``Ledger.queue_chain`` with one request), for the
tests of the decision/commit overlap the charge path relies on."""

from __future__ import annotations

import asyncio
from typing import Any

from tollway.core.errors import TollwayError
from tollway.ledger import Ledger, Transfer
from tollway.ledger.apply import Result
from tollway.ledger.ops import CreateTransfer


async def reserve_early(
    ledger: Ledger, debit: str, credit: str, amount: int, **kw: Any
) -> tuple[Transfer, asyncio.Future[Result]]:
    """The reservation as decided (a refusal is raised, once committed) and
    its commit's future."""
    [(decided, committed)] = ledger.queue_chain([CreateTransfer(debit, credit, amount, pending=True, **kw)])
    assert decided is not None
    r = await decided
    if isinstance(r, TollwayError):
        raise r
    return r, committed
