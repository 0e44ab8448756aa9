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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.core.money import check_amount
from tollway.ledger import Ledger, Transfer
from tollway.ledger import errors as ledger_errors
from tollway.ledger.ops import Usage
from tollway.observe import metrics

log = logging.getLogger("tollway.charge")

_RESERVE_ATTEMPTS = 3


async def _all(aws: Sequence[Awaitable[Any]], *, return_exceptions: bool = False) -> list[Any]:
    """``asyncio.gather``, without its task and gathering future for the usual
    single leg (this is on every charge)."""
    if len(aws) != 1:
        return list(await asyncio.gather(*aws, return_exceptions=return_exceptions))
    try:
        return [await aws[0]]
    except Exception as e:
        if not return_exceptions:
            raise
        return [e]


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
    _committing: list[asyncio.Future[Any]] = field(default_factory=list)  # reserve(early=True)
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
        """Reserve the maximum. ``early``: return once the ledger has *decided*
        the reservation, before its commit, so the work can start while it
        commits (settle and release join the commit through :meth:`confirm`).

        With several sources the split is planned from their balances, which
        concurrent requests move: a leg the ledger refuses means another
        request took that money first, so the plan is made again. The last try
        draws on the last source alone (the prepaid balance, after a contended
        free allowance): a customer who can pay is never refused because an
        earlier source was being used up at that moment."""
        sources = self.payer.funding()
        for attempt in range(_RESERVE_ATTEMPTS):
            last = attempt == _RESERVE_ATTEMPTS - 1
            plan = (
                [(sources[-1], self.max_amount)] if last and len(sources) > 1 else await self._plan(sources)
            )
            try:
                await self._reserve_legs(plan, early, attempt)
                return
            except TollwayError as e:
                # Another request took the money between the plan and the reserve
                # (only a split across several sources can be planned again).
                if e.code != "insufficient_funds" or last or len(sources) == 1:
                    metrics.CHARGES.labels("refused").inc()
                    raise

    async def _plan(self, sources: tuple[Source, ...]) -> list[tuple[Source, int]]:
        if len(sources) == 1:
            return [(sources[0], self.max_amount)]
        need = self.max_amount
        plan: list[tuple[Source, int]] = []
        for s in sources:
            if s.unbounded:
                plan.append((s, need))
                return plan
            available = max((await self.ledger.get_account(s.account_id)).available, 0)
            take = min(need, available)
            if take:
                plan.append((s, take))
                need -= take
            if not need:
                return plan
        metrics.CHARGES.labels("refused").inc()
        raise ledger_errors.exceeds_credits(sources[-1].account_id, self.max_amount - need, self.max_amount)

    async def _reserve_legs(self, plan: list[tuple[Source, int]], early: bool, attempt: int = 0) -> None:
        caps: list[tuple[Source | Cap, int]] = [
            (c, self.max_amount if c.units is None else c.units) for c in self.payer.caps
        ]
        plan_all: list[tuple[Source | Cap, int]] = [*plan, *caps]

        async def leg(i: int, s: Source | Cap, amount: int) -> tuple[Transfer, asyncio.Future[Any] | None]:
            kw: dict[str, Any] = {
                "timeout_s": self.timeout_s,
                "description": self.description or self.meter,
                "idempotency_key": self._key("reserve" if not attempt else f"reserve{attempt}", i),
            }
            if early:
                return await self.ledger.reserve_early(s.account_id, s.payee or self.payee, amount, **kw)
            return await self.ledger.reserve(s.account_id, s.payee or self.payee, amount, **kw), None

        results: list[Any]
        if early:  # queued together, decided in one batch: no task per leg
            queued = [
                self.ledger.queue_reserve(
                    s.account_id,
                    s.payee or self.payee,
                    amount,
                    timeout_s=self.timeout_s,
                    description=self.description or self.meter,
                    idempotency_key=self._key("reserve" if not attempt else f"reserve{attempt}", i),
                )
                for i, (s, amount) in enumerate(plan_all)
            ]
            results = []
            for decision, commit in queued:
                r = await decision
                results.append(r if isinstance(r, TollwayError) else (r, commit))
        else:
            results = await _all(
                [leg(i, s, amount) for i, (s, amount) in enumerate(plan_all)], return_exceptions=True
            )
        done = [
            (s, r) for (s, _), r in zip(plan_all, results, strict=True) if not isinstance(r, BaseException)
        ]
        legs = [Leg(s, t) for s, (t, _) in done]
        committing = [c for _, (_, c) in done if c is not None]
        failed = [(s, r) for (s, _), r in zip(plan_all, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            if early:  # legs and committing line up: void only what committed
                outcomes = await _all(committing)
                for lg, r in zip(legs, outcomes, strict=True):
                    if isinstance(r, Transfer):
                        lg.pending = r
                legs = [lg for lg, r in zip(legs, outcomes, strict=True) if isinstance(r, Transfer)]
            await _all([self.ledger.void(lg.pending.id) for lg in legs])
            src, err = failed[0]
            if isinstance(src, Cap) and isinstance(err, TollwayError) and err.code == "insufficient_funds":
                # Not a retry case: the budget or quota, not the balance, is what ran out.
                raise src.refusal(self.max_amount) from None
            raise err
        self.legs, self._committing, self._hold_id = legs, committing, legs[0].pending.id
        self.reserved_at = time.monotonic()
        if self.live is not None:
            self.live[id(self)] = self

    async def confirm(self) -> None:
        """Join the commit of a reservation made with ``early``. If it did not
        commit as decided, void whatever legs did, and raise (nothing is held
        or charged). A no-op once joined, or for a plain reservation."""
        if self._refused is not None:
            raise self._refused
        futs, self._committing = self._committing, []
        if not futs:
            return
        results = await _all(futs)
        for lg, r in zip(self.legs, results, strict=True):
            if isinstance(r, Transfer):
                lg.pending = r  # after a retried batch, the committed transfer is the real one
        bad = [r for r in results if not isinstance(r, Transfer)]
        if not bad:
            return
        await asyncio.gather(
            *(
                self.ledger.void(lg.pending.id)
                for lg, r in zip(self.legs, results, strict=True)
                if isinstance(r, Transfer)
            )
        )
        self.legs = []
        self._forget()
        metrics.CHARGES.labels("refused").inc()
        err = bad[0]
        self._refused = (
            err
            if isinstance(err, TollwayError)
            else TollwayError(
                ErrorType.API, "database_unavailable", f"the reservation did not commit: {err}", status=503
            )
        )
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
        ops = []
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
            if take:
                ops.append(
                    self.ledger.post(
                        leg.pending.id, take, idempotency_key=self._key("post", i), usage=u, linger=linger
                    )
                )
            else:
                ops.append(
                    self.ledger.void(
                        leg.pending.id, idempotency_key=self._key("void", i), usage=u, linger=linger
                    )
                )
        transfers = await _all(ops)
        metrics.CHARGES.labels("posted" if actual else "free").inc()
        metrics.CHARGED_MICROS.inc(actual)
        self.receipt = Receipt(self.max_amount, actual, self._hold_id, transfers[0].id)
        return self.receipt

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
        await asyncio.gather(
            *(
                self.ledger.void(leg.pending.id, idempotency_key=self._key("void", i))
                for i, leg in enumerate(self.legs)
            )
        )
        metrics.CHARGES.labels("voided").inc()
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
