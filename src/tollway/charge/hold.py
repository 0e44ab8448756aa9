"""``async with charger.hold(payer, max_amount, meter=...) as h: ...; h.post(actual)``

1. **reserve** — pending transfers totalling ``max_amount``, drawn from the
   payer's funding sources in order (e.g. today's free allowance, then prepaid
   credit); if they cannot cover it together, ``insufficient_funds`` (HTTP 402)
   is raised before any work runs and nothing stays reserved.
2. **serve** — the body of the ``async with``.
3. **post** — on a clean exit, the amount given to :meth:`Hold.post` is taken
   (from the sources in the same order) and the rest released, with one usage
   event recorded atomically with the first leg.  ``post(0)`` (or no call)
   voids the hold but still records the usage.
4. **void** — on any exception, cancellation included, the hold is voided
   and the exception propagates.  If the process dies in between, the hold
   expires after its timeout: a caller is never charged for work that did
   not finish, and never more than the maximum.

Streaming callers that must charge for partial work (a client that hangs up
mid-generation) call :meth:`Hold.settle` themselves instead of relying on the
context manager.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.core.money import check_amount
from tollway.ledger import Ledger, Transfer
from tollway.ledger.apply import Result
from tollway.ledger.ops import CreateTransfer, ResolvePending, Usage
from tollway.observe import metrics

log = logging.getLogger("tollway.charge")


def budget_exceeded(label: str, amount: int) -> TollwayError:
    return TollwayError(
        ErrorType.PAYMENT,
        "budget_exceeded",
        f"the {label} cannot cover this request (up to {amount} micro-USD); nothing was charged",
        status=402,
    )


@dataclass(frozen=True, slots=True)
class Source:
    """One funding source: an account to debit and the account its money goes to."""

    account_id: str
    payee: str | None = None  # None: the charger's default payee
    # Billed in arrears (overage): the account may go below zero, so it covers
    # whatever the sources before it cannot.
    unbounded: bool = False


@dataclass(frozen=True, slots=True)
class Cap:
    """A spend limit: a budget account that must cover the whole amount as well
    (it is reserved and posted alongside the payment, never instead of it)."""

    account_id: str
    label: str  # what to name in a refusal, e.g. "key daily budget"
    payee: str = "sys_budgets"
    # None: the cap is in micro-USD and takes the whole amount (a budget). A
    # number: the cap counts its own units, this many per charge (a plan's
    # request quota), taken whatever the charge comes to.
    units: int | None = None
    code: str = "budget_exceeded"
    hint: str = ""  # what to do about a refusal (e.g. how to upgrade)

    def refusal(self, amount: int) -> TollwayError:
        if self.units is None and self.code == "budget_exceeded":
            return budget_exceeded(self.label, amount)
        return TollwayError(
            ErrorType.PAYMENT,
            self.code,
            f"the {self.label} is used up; nothing was charged.{' ' + self.hint if self.hint else ''}",
            status=402,
        )


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays: a ledger account (or several sources, in order) and the customer."""

    account_id: str
    customer_id: str | None = None
    sources: tuple[Source, ...] = ()
    caps: tuple[Cap, ...] = ()

    def funding(self) -> tuple[Source, ...]:
        return self.sources or (Source(self.account_id),)


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
        # Holds reserved and not yet settled or released, by id(hold): what
        # charge.recovery checkpoints (those with a progress function).
        self.live: dict[int, Hold] = {}

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
            live=self.live,
        )


@dataclass(slots=True)
class Leg:
    source: Source | Cap
    pending: Transfer


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
    legs: list[Leg] = field(default_factory=list)
    receipt: Receipt | None = None
    _actual: int | None = None
    _quantity: int = 0
    _metadata: dict[str, Any] = field(default_factory=dict)
    _settling: asyncio.Future[Receipt] | None = None
    _committing: list[asyncio.Future[Result]] = field(default_factory=list)  # reserve(early=True)
    _chained: list[Source | Cap] = field(default_factory=list)  # what each leg of the chain draws on
    _refused: TollwayError | None = None  # the reservation's commit failed (see confirm)
    _hold_id: str = ""
    # What the work so far costs: (amount, quantity, usage metadata). A long
    # call sets it so a crash mid-call can still charge what was delivered
    # (charge.recovery checkpoints it).
    progress: Callable[[], tuple[int, int, dict[str, Any]]] | None = None
    reserved_at: float = 0.0  # time.monotonic() when the reservation stood
    live: dict[int, Hold] | None = None  # the charger's live holds (see Charger.live)

    @property
    def hold_id(self) -> str:
        """The first reservation's id, which names the hold ("" before it is reserved)."""
        return self._hold_id

    @classmethod
    def attach(
        cls,
        ledger: Ledger,
        payer: Payer,
        max_amount: int,
        legs: list[Leg],
        *,
        meter: str,
        payee: str,
        idempotency_key: str | None = None,
    ) -> Hold:
        """A hold on a reservation made earlier (by another process, or before
        a restart): ``legs`` are its pending transfers, first one first."""
        hold = cls(ledger, payer, max_amount, meter, payee, idempotency_key=idempotency_key, legs=legs)
        hold._hold_id = legs[0].pending.id
        return hold

    @property
    def pending(self) -> Transfer | None:
        """The first reservation (its id names the hold)."""
        return self.legs[0].pending if self.legs else None

    def post(self, actual: int, *, quantity: int | None = None, **metadata: Any) -> None:
        """Set what to take when the block exits cleanly (0 ≤ actual ≤ max)."""
        self._check_actual(actual)
        self._actual = actual
        self._quantity = actual if quantity is None else quantity
        self._metadata = metadata

    def _check_actual(self, actual: int) -> None:
        if isinstance(actual, bool) or not isinstance(actual, int) or actual < 0:
            raise invalid("invalid_amount", "actual must be a non-negative integer", "amount")
        if actual > self.max_amount:
            raise invalid(
                "amount_exceeds_pending",
                f"cannot charge {actual}: only {self.max_amount} was reserved",
                "amount",
            )

    def _key(self, step: str, i: int) -> str | None:
        return f"{self.idempotency_key}:{step}:{i}" if self.idempotency_key else None

    # ------------------------------------------------------------------ reserve

    async def reserve(self, *, early: bool = False) -> None:
        """Reserve the maximum: every source leg and every cap leg in one linked
        chain, so they all stand or none does. ``early``: return once the ledger
        has *decided* the reservation, before its commit, so the work can start
        while it commits (settle and release join the commit through
        :meth:`confirm`).

        With several sources the legs are split legs: the ledger divides the
        maximum between them in order, on the balances it reads under the write
        lock, so concurrent requests that drain an earlier source never get a
        payer who can pay refused. A refusal names its leg: a cap's own error,
        or ``insufficient_funds`` for the balance."""
        chain = self._chain()
        ops = [op for _, op in chain]
        results: list[Result]
        if early:  # queued together, decided in one batch: no task per leg
            queued = self.ledger.queue_chain(ops)
            results = []
            for decision, _ in queued:
                assert decision is not None
                results.append(await decision)
            commits = [c for _, c in queued]
        else:
            results, commits = await self.ledger.chain(ops), []
        for (src, _), r in zip(chain, results, strict=True):
            if isinstance(r, TollwayError) and r.code != "linked_event_failed":
                metrics.CHARGES_REFUSED.inc()
                if isinstance(src, Cap) and r.code == "insufficient_funds":
                    # The budget or quota, not the balance, is what ran out.
                    raise src.refusal(self.max_amount) from None
                raise r
        self._chained = [s for s, _ in chain]
        self._taken([r for r in results if isinstance(r, Transfer)])  # all of them: the chain stood
        self._committing = commits
        self.reserved_at = time.monotonic()
        if self.live is not None:  # checkpointed while it runs, if it has a progress function
            self.live[id(self)] = self

    def _chain(self) -> list[tuple[Source | Cap, CreateTransfer]]:
        """The reservation's legs: the sources (split legs when there are
        several; none after an unbounded one, which covers all the rest), then
        the caps."""
        sources = self.payer.funding()
        for i, s in enumerate(sources):
            if s.unbounded:
                sources = sources[: i + 1]
                break
        split = len(sources) > 1
        legs: list[tuple[Source | Cap, int, bool]] = [(s, self.max_amount, split) for s in sources]
        legs += [(c, self.max_amount if c.units is None else c.units, False) for c in self.payer.caps]
        description = self.description or self.meter
        return [
            (
                s,
                CreateTransfer(
                    s.account_id,
                    s.payee or self.payee,
                    amount,
                    pending=True,
                    timeout_s=self.timeout_s,
                    description=description,
                    idempotency_key=self._key("reserve", i),
                    split=is_split,
                ),
            )
            for i, (s, amount, is_split) in enumerate(legs)
        ]

    def _taken(self, transfers: list[Transfer]) -> None:
        """The legs that took something (a split leg may take nothing)."""
        self.legs = [Leg(s, t) for s, t in zip(self._chained, transfers, strict=True) if t.id]
        self._hold_id = self.legs[0].pending.id

    async def confirm(self) -> None:
        """Join the commit of a reservation made with ``early``. If it did not
        commit as decided, raise: the chain committed whole or not at all, so
        nothing is held or charged. A no-op once joined, or for a plain
        reservation."""
        if self._refused is not None:
            raise self._refused
        futs, self._committing = self._committing, []
        if not futs:
            return
        results: list[Result] = [await f for f in futs]  # one batch commits them all
        bad = [r for r in results if isinstance(r, TollwayError)]
        if not bad:
            self._taken(
                [r for r in results if isinstance(r, Transfer)]
            )  # after a retried batch, the committed transfers are the real ones
            return
        self.legs = []
        self._forget()
        metrics.CHARGES_REFUSED.inc()
        err = next((r for r in bad if r.code != "linked_event_failed"), bad[0])
        self._refused = err
        raise self._refused

    # ------------------------------------------------------------------- settle

    async def settle(self, actual: int, *, quantity: int | None = None, **metadata: Any) -> Receipt:
        """Take ``actual`` now (0 voids) and release the rest; record one usage event.
        It runs once: it completes even if its caller is cancelled, and a second
        call (settle or release) waits for the first and returns its receipt."""
        return await asyncio.shield(self._start(actual, quantity, metadata, linger=False))

    def settle_soon(
        self, actual: int, *, quantity: int | None = None, linger: bool = True, **metadata: Any
    ) -> asyncio.Future[Receipt]:
        """Start the settle and return at once: the future completes on commit.
        With ``linger`` nobody is about to wait on it (a response goes out
        first, the ``fast`` acknowledgement), so it rides with the ledger's next
        batch (see ``Ledger.linger_s``); without, it is queued for the next
        commit at once, for a caller that will wait before it reports the
        charge. :meth:`wait` joins it."""
        return self._start(actual, quantity, metadata, linger=linger)

    def _start(
        self, actual: int, quantity: int | None, metadata: dict[str, Any], *, linger: bool
    ) -> asyncio.Future[Receipt]:
        self._check_actual(actual)
        if self._settling is None:
            self._forget()
            self._settling = asyncio.ensure_future(self._settle(actual, quantity, metadata, linger=linger))
        return self._settling

    def _forget(self) -> None:
        if self.live is not None:
            self.live.pop(id(self), None)

    async def wait(self) -> Receipt | None:
        """Wait for a settle or release already started (None if none was)."""
        if self._settling is None:
            return None
        return await asyncio.shield(self._settling)

    async def _settle(
        self, actual: int, quantity: int | None, metadata: dict[str, Any], *, linger: bool = False
    ) -> Receipt:
        await self.confirm()
        usage = Usage(
            self.meter,
            actual if quantity is None else quantity,
            self.payer.customer_id,
            metadata,
            amount=actual,
        )
        remaining = actual
        ops: list[ResolvePending] = []
        takes = []
        for leg in self.legs:
            if isinstance(leg.source, Cap):
                # A budget is spent by the whole amount; a quota by its units.
                takes.append(actual if leg.source.units is None else leg.pending.amount)
            else:
                takes.append(min(remaining, leg.pending.amount))
                remaining -= takes[-1]
        if any(s.unbounded for s in self.payer.funding()):
            # What is billed in arrears (the invoiced overage): Stripe's metered price bills this share.
            usage.metadata["overage"] = sum(
                t
                for lg, t in zip(self.legs, takes, strict=True)
                if isinstance(lg.source, Source) and lg.source.unbounded
            )
        for i, (leg, take) in enumerate(zip(self.legs, takes, strict=True)):
            u = usage if i == 0 else None
            key = self._key("post" if take else "void", i)
            ops.append(ResolvePending(leg.pending.id, bool(take), take or None, False, key, u))
        transfers = await self._resolve(ops, linger=linger)
        (metrics.CHARGES_POSTED if actual else metrics.CHARGES_FREE).inc()
        metrics.CHARGED_MICROS.inc(actual)
        self.receipt = Receipt(self.max_amount, actual, self._hold_id, transfers[0].id)
        return self.receipt

    async def _resolve(self, ops: list[ResolvePending], *, linger: bool = False) -> list[Transfer]:
        """Post or void the legs: every op queued before any is awaited, so one
        batch commits them, and no leg needs a task of its own. A refused leg
        raises (the others still commit or are refused on their own)."""
        futs = [self.ledger.queue(op, linger=linger) for op in ops]
        transfers: list[Transfer] = []
        for f in futs:
            r = await f
            if isinstance(r, TollwayError):
                raise r
            transfers.append(r)
        return transfers

    async def release(self) -> None:
        """Void every leg: nothing is taken, no usage recorded (a no-op once settled)."""
        if self._refused is not None:
            return  # the reservation never stood: nothing is held
        if self._settling is None:
            self._forget()
            self._settling = asyncio.ensure_future(self._release())
        await asyncio.shield(self._settling)

    async def _release(self) -> Receipt:
        try:
            await self.confirm()
        except TollwayError:  # the reservation never stood: nothing to release
            return Receipt(self.max_amount, 0, self._hold_id, None)
        await self._resolve(
            [
                ResolvePending(leg.pending.id, False, None, False, self._key("void", i))
                for i, leg in enumerate(self.legs)
            ]
        )
        metrics.CHARGES_VOIDED.inc()
        self.receipt = Receipt(self.max_amount, 0, self._hold_id, None)
        return self.receipt

    # ---------------------------------------------------------- context manager

    async def __aenter__(self) -> Hold:
        await self.reserve()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.release()
            return
        await self.settle(self._actual or 0, quantity=self._quantity, **self._metadata)
