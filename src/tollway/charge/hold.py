"""``async with charger.hold(payer, max_amount, meter=...) as h: ...; h.post(actual)``

1. **reserve** — a pending transfer of ``max_amount`` from the payer to the
   payee; an overdraft is refused here (``insufficient_funds``, HTTP 402),
   before any work runs.
2. **serve** — the body of the ``async with``.
3. **post** — on a clean exit, the amount given to :meth:`Hold.post` is taken
   and the rest released, atomically with a usage event.  ``post(0)`` (or no
   call at all) voids the hold but still records the usage.
4. **void** — on any exception, cancellation included, the hold is voided
   and the exception propagates.  If the process dies in between, the hold
   expires after its timeout: a caller is never charged for work that did
   not finish, and never more than the maximum.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tollway.core.errors import invalid
from tollway.core.money import check_amount
from tollway.ledger import Ledger, Transfer
from tollway.ledger.ops import Usage
from tollway.observe import metrics

log = logging.getLogger("tollway.charge")


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays: a ledger account, and the customer it belongs to (if any)."""

    account_id: str
    customer_id: str | None = None


@dataclass(slots=True)
class Receipt:
    reserved: int
    charged: int
    hold_id: str
    transfer_id: str | None

    def headers(self) -> dict[str, str]:
        h = {"x-tollway-charged": str(self.charged), "x-tollway-hold": self.hold_id}
        if self.transfer_id:
            h["x-tollway-transfer"] = self.transfer_id
        return h


class Charger:
    def __init__(self, ledger: Ledger, *, payee: str = "sys_revenue", timeout_s: int | None = None) -> None:
        self.ledger = ledger
        self.payee = payee
        self.timeout_s = timeout_s

    def hold(
        self,
        payer: Payer,
        max_amount: int,
        *,
        meter: str,
        payee: str | None = None,
        description: str = "",
        idempotency_key: str | None = None,
        timeout_s: int | None = None,
    ) -> Hold:
        check_amount(max_amount, "max_amount")
        return Hold(
            self.ledger,
            payer,
            max_amount,
            meter=meter,
            payee=payee or self.payee,
            description=description,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s or self.timeout_s,
        )


@dataclass(slots=True)
class Hold:
    ledger: Ledger
    payer: Payer
    max_amount: int
    meter: str
    payee: str
    description: str = ""
    idempotency_key: str | None = None
    timeout_s: int | None = None
    pending: Transfer | None = None
    receipt: Receipt | None = None
    _actual: int | None = None
    _quantity: int = 0
    _metadata: dict[str, Any] = field(default_factory=dict)

    def post(self, actual: int, *, quantity: int | None = None, **metadata: Any) -> None:
        """Set what to take when the block exits cleanly (0 ≤ actual ≤ max)."""
        if isinstance(actual, bool) or not isinstance(actual, int) or actual < 0:
            raise invalid("invalid_amount", "actual must be a non-negative integer", "amount")
        if actual > self.max_amount:
            raise invalid(
                "amount_exceeds_pending",
                f"cannot charge {actual}: only {self.max_amount} was reserved",
                "amount",
            )
        self._actual = actual
        self._quantity = actual if quantity is None else quantity
        self._metadata = metadata

    def _key(self, step: str) -> str | None:
        return f"{self.idempotency_key}:{step}" if self.idempotency_key else None

    async def __aenter__(self) -> Hold:
        try:
            self.pending = await self.ledger.reserve(
                self.payer.account_id,
                self.payee,
                self.max_amount,
                timeout_s=self.timeout_s,
                description=self.description or self.meter,
                idempotency_key=self._key("reserve"),
            )
        except Exception:
            metrics.CHARGES.labels("refused").inc()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.pending is not None
        if exc_type is not None:
            # The request is already queued when the coroutine starts, so even a
            # second cancellation here cannot stop the void from committing.
            await asyncio.shield(self.ledger.void(self.pending.id, idempotency_key=self._key("void")))
            metrics.CHARGES.labels("voided").inc()
            self.receipt = Receipt(self.max_amount, 0, self.pending.id, None)
            return
        actual = self._actual or 0
        usage = Usage(self.meter, self._quantity, self.payer.customer_id, self._metadata)
        if actual > 0:
            t = await self.ledger.post(
                self.pending.id, actual, idempotency_key=self._key("post"), usage=usage
            )
            metrics.CHARGES.labels("posted").inc()
            metrics.CHARGED_MICROS.inc(actual)
        else:
            t = await self.ledger.void(self.pending.id, idempotency_key=self._key("void"), usage=usage)
            metrics.CHARGES.labels("free").inc()
        self.receipt = Receipt(self.max_amount, actual, self.pending.id, t.id)
