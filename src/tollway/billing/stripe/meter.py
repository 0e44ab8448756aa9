"""Usage to Stripe's ``tollway_neurons`` meter, in batches, durably.

The usage events themselves are the queue: a cursor in ``billing_state``
(``created_at_us:id`` of the last event pushed) marks how far the push got.
Each round takes the next batch of ``neurons`` usage events, charged through
the ledger (``transfer_id`` set), of customers linked to a Stripe customer,
older than ``[billing] meter_lag_seconds`` (a ledger batch may still be
committing younger ones), and sends them; the cursor then moves past the
longest run of events that went through. So when Stripe is down, or the
process is killed, nothing is lost: the events wait behind the cursor and
drain later. An event sent twice (its answer was lost, the process died before
the cursor moved) is sent with the same identifier, the usage event's id, and
the same ``Idempotency-Key``: Stripe counts it once.

Limits (Stripe's v1 meter events): 1,000 calls a second, and one concurrent
call per customer per meter, so each customer's events go one after another
while customers go side by side. A 429 waits ``Retry-After`` (or backs off
exponentially, with jitter, up to a minute), as do 5xx answers and connection
errors. With ``[billing] meter_event_stream = true`` events go to the v2
meter event stream instead, 100 a call, authenticated by a meter event session
that is renewed before it expires.

One process pushes at a time: a lease in ``billing_state``, renewed every
round; if its holder dies, another process takes over once it lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import and_, func, or_, select

from tollway.billing.stripe.service import METER_EVENT, StripeBilling
from tollway.billing.stripe.store import CUSTOMER, METER
from tollway.billing.stripe.units import billable_mneurons
from tollway.core.ids import new_id
from tollway.core.schema import stripe_objects as O
from tollway.core.schema import usage_events as U

log = logging.getLogger("tollway.stripe.meter")

CURSOR = "stripe.meter.cursor"
LEASE = "stripe.meter.lease"
REJECTED = "stripe.meter.rejected"
BATCH = 500
V1_CALLS_PER_S = 1000
V1_CONCURRENCY = 32
V2_EVENTS_PER_CALL = 100
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
END = "\x7f"  # sorts after every id: (t, END) is "all of t"


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at_us: int
    id: str

    def encode(self) -> str:
        return f"{self.created_at_us}:{self.id}"

    @classmethod
    def decode(cls, s: str | None) -> Cursor:
        if not s:
            return cls(-1, "")
        t, _, i = s.partition(":")
        return cls(int(t), i)

    def __lt__(self, other: Cursor) -> bool:
        return (self.created_at_us, self.id) < (other.created_at_us, other.id)


@dataclass(frozen=True, slots=True)
class Pending:
    """One usage event to push."""

    id: str
    created_at_us: int
    customer_id: str
    stripe_customer: str
    value: int  # milli-neurons billed

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at_us, self.id)


class Retry(Exception):
    """A round stopped early: Stripe failed; come back after ``delay_s``."""

    def __init__(self, why: str, delay_s: float | None = None, *, block: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.delay_s = delay_s
        self.block = block


@dataclass
class Stats:
    sent: int = 0
    rejected: int = 0
    failures: int = 0
    rounds: int = 0
    last_error: str = ""
    last_push_us: int = 0


def _retry_after(e: stripe.StripeError) -> float | None:
    headers: Any = getattr(e, "headers", None) or {}
    try:
        v = headers.get("Retry-After") or headers.get("retry-after")
        return None if v is None else max(0.0, float(v))
    except (AttributeError, TypeError, ValueError):
        return None


def _classify(e: stripe.StripeError) -> str:
    """``"retry"`` (Stripe is busy or down: later), ``"reject"`` (this event can
    never be taken: skip it, counted), or ``"block"`` (bad configuration: wait, loudly)."""
    status = e.http_status or 0
    if (
        isinstance(e, (stripe.APIConnectionError, stripe.RateLimitError))
        or status in (409, 429)
        or status >= 500
    ):
        return "retry"
    if status == 400 and getattr(e, "param", None) == "timestamp":
        return "reject"  # older than Stripe's 35 days: it will never be accepted
    return "block"


def metadata_of(raw: Any) -> dict[str, Any]:
    try:
        m = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us // 1_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class MeterPusher:
    def __init__(self, sb: StripeBilling) -> None:
        self.sb = sb
        cfg = sb.settings.billing
        self.interval_s = cfg.meter_push_interval_seconds
        self.lag_us = cfg.meter_lag_seconds * 1_000_000
        self.stream = cfg.meter_event_stream
        self.lease_ttl_us = int(min(max(5 * self.interval_s, 2.0), 60.0) * 1_000_000)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id('push')}"
        self.stats = Stats()
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._session: tuple[str, float] | None = None  # v2: (token, renew after; monotonic s)
        self._next_call = 0.0  # v1: the earliest start of the next call (monotonic s)
        self._warned_unsynced = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="stripe-meter-push")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # let another process push at once
            await self.sb.store.release_lease(LEASE, self.owner)

    async def run(self) -> None:
        while True:
            try:
                delay = await self.push_once()
            except Exception as e:  # the database, most likely: keep going
                log.exception("meter push failed")
                self.stats.last_error = f"{type(e).__name__}: {e}"
                self._failures += 1
                delay = self._backoff()
            await asyncio.sleep(delay)

    async def drain(self, *, max_rounds: int = 10_000) -> int:
        """Push everything due now, round after round; returns how many events
        were sent. Raises :class:`Retry` at the first round Stripe fails."""
        sent = self.stats.sent
        for _ in range(max_rounds):
            delay = await self.push_once()
            if self._failures:
                raise Retry(self.stats.last_error, delay)
            if delay > 0:
                break
        return self.stats.sent - sent

    # ---------------------------------------------------------------- round

    async def push_once(self) -> float:
        """One round; returns how long to wait before the next."""
        store = self.sb.store
        if not await store.acquire_lease(LEASE, self.owner, self.lease_ttl_us):
            return self.interval_s
        if await store.get(METER, METER_EVENT) is None:
            if not self._warned_unsynced:
                log.warning("the Stripe meter is not set up (run `tollway stripe sync`); usage waits for it")
                self._warned_unsynced = True
            return self.interval_s
        self.stats.rounds += 1
        cursor = Cursor.decode(await store.state(CURSOR))
        horizon = self.sb.clock.now_us() - self.lag_us
        rows = await self._load(cursor, horizon)
        due = [r for r in rows if r.value != 0]
        rejected_before = self.stats.rejected
        done, problem = await (self._send_v2(due) if self.stream else self._send_v1(due))
        # The cursor moves past the longest run of events that are done.
        last: Cursor | None = None
        for r in rows:
            if r.value != 0 and r.id not in done:
                break
            last = r.cursor
        else:
            if len(rows) < BATCH:
                last = Cursor(horizon - 1, END)  # every event below the horizon is done
        if last is not None and cursor < last:
            await store.set_state(CURSOR, last.encode(), lease=(LEASE, self.owner))
            self.stats.last_push_us = self.sb.clock.now_us()
        if self.stats.rejected > rejected_before:
            total = int(await store.state(REJECTED) or 0) + self.stats.rejected - rejected_before
            await store.set_state(REJECTED, str(total), lease=(LEASE, self.owner))
        if problem is not None:
            self.stats.failures += 1
            self.stats.last_error = problem.why
            self._failures += 1
            delay = BACKOFF_MAX_S if problem.block else self._backoff(problem.delay_s)
            (log.error if problem.block else log.warning)(
                "Stripe meter push stopped (%s); %d events wait, next try in %.1fs",
                problem.why,
                len(due) - len(done),
                delay,
            )
            return delay
        self._failures = 0
        return 0.0 if len(rows) == BATCH else self.interval_s

    def _backoff(self, at_least: float | None = None) -> float:
        """Exponential, with jitter, by the failures in a row; at least ``at_least``."""
        base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (1 << min(max(self._failures - 1, 0), 16)))
        return max(base * random.uniform(0.5, 1.0), at_least or 0.0)

    async def _load(self, cursor: Cursor, horizon: int) -> list[Pending]:
        cols = (
            U.c.id,
            U.c.created_at_us,
            U.c.customer_id,
            O.c.stripe_id,
            U.c.quantity,
            U.c.amount,
            U.c.metadata,
        )
        q = (
            select(*cols)
            .select_from(U.join(O, and_(O.c.kind == CUSTOMER, O.c.local_id == U.c.customer_id)))
            .where(
                U.c.meter == "neurons",
                U.c.transfer_id.is_not(None),
                U.c.created_at_us < horizon,
                or_(
                    U.c.created_at_us > cursor.created_at_us,
                    and_(U.c.created_at_us == cursor.created_at_us, U.c.id > cursor.id),
                ),
            )
            .order_by(U.c.created_at_us, U.c.id)
            .limit(BATCH)
        )
        async with self.sb.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            Pending(str(i), int(t), str(c), str(s), billable_mneurons(int(qty), int(a), metadata_of(m)))
            for i, t, c, s, qty, a, m in rows
        ]

    # ------------------------------------------------------------------- v1

    async def _pace(self) -> None:
        """At most V1_CALLS_PER_S calls a second, evenly spaced."""
        now = time.monotonic()
        slot = max(now, self._next_call)
        self._next_call = slot + 1 / V1_CALLS_PER_S
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _send_v1(self, due: Sequence[Pending]) -> tuple[set[str], Retry | None]:
        by_customer: dict[str, list[Pending]] = {}
        for p in due:
            by_customer.setdefault(p.stripe_customer, []).append(p)
        done: set[str] = set()
        problem: list[Retry] = []
        gate = asyncio.Semaphore(V1_CONCURRENCY)
        events = self.sb.client.v1.billing.meter_events

        async def customer(queue: list[Pending]) -> None:
            async with gate:
                for p in queue:  # one call at a time per customer (and meter)
                    if problem:
                        return
                    await self._pace()
                    try:
                        await events.create_async(
                            {
                                "event_name": METER_EVENT,
                                "identifier": p.id,
                                "payload": {"stripe_customer_id": p.stripe_customer, "value": str(p.value)},
                                "timestamp": p.created_at_us // 1_000_000,
                            },
                            {"idempotency_key": f"tollway-meter-{p.id}", "max_network_retries": 0},
                        )
                    except stripe.StripeError as e:
                        kind = _classify(e)
                        if kind == "reject":
                            log.error("Stripe refused usage event %s for good (%s); skipped", p.id, e)
                            self.stats.rejected += 1
                            done.add(p.id)
                            continue
                        why = f"{e.http_status or 'no answer'} {type(e).__name__}: {e.user_message or e}"
                        problem.append(Retry(why, _retry_after(e), block=kind == "block"))
                        return
                    done.add(p.id)
                    self.stats.sent += 1

        await asyncio.gather(*(customer(q) for q in by_customer.values()))
        return done, (problem[0] if problem else None)

    # ------------------------------------------------------------------- v2

    async def _token(self) -> str:
        if self._session is not None and time.monotonic() < self._session[1]:
            return self._session[0]
        s = await self.sb.client.v2.billing.meter_event_session.create_async(None, {"max_network_retries": 0})
        left = 15 * 60.0
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            expires = dt.datetime.fromisoformat(str(s.expires_at).replace("Z", "+00:00"))
            left = expires.timestamp() - time.time()
        self._session = (s.authentication_token, time.monotonic() + max(0.0, left - 60))
        return s.authentication_token

    async def _send_v2(self, due: Sequence[Pending]) -> tuple[set[str], Retry | None]:
        done: set[str] = set()
        stream = self.sb.client.v2.billing.meter_event_stream
        for i in range(0, len(due), V2_EVENTS_PER_CALL):
            chunk = due[i : i + V2_EVENTS_PER_CALL]
            body: Any = {
                "events": [
                    {
                        "event_name": METER_EVENT,
                        "identifier": p.id,
                        "payload": {"stripe_customer_id": p.stripe_customer, "value": str(p.value)},
                        "timestamp": _iso(p.created_at_us),
                    }
                    for p in chunk
                ]
            }
            for attempt in range(2):
                try:
                    token = await self._token()
                    await stream.create_async(body, {"api_key": token, "max_network_retries": 0})
                    break
                except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError) as e:
                    self._session = None  # a new session, once
                    if attempt:
                        return done, Retry(f"meter event session refused: {e}", block=True)
                except stripe.StripeError as e:
                    kind = _classify(e)
                    why = f"{e.http_status or 'no answer'} {type(e).__name__}: {e.user_message or e}"
                    return done, Retry(why, _retry_after(e), block=kind != "retry")
            done.update(p.id for p in chunk)
            self.stats.sent += len(chunk)
        return done, None

    # --------------------------------------------------------------- status

    async def status(self) -> dict[str, Any]:
        store = self.sb.store
        cursor = Cursor.decode(await store.state(CURSOR))
        q = (
            select(func.count())
            .select_from(U.join(O, and_(O.c.kind == CUSTOMER, O.c.local_id == U.c.customer_id)))
            .where(
                U.c.meter == "neurons",
                U.c.transfer_id.is_not(None),
                or_(
                    U.c.created_at_us > cursor.created_at_us,
                    and_(U.c.created_at_us == cursor.created_at_us, U.c.id > cursor.id),
                ),
            )
        )
        async with self.sb.engine.connect() as conn:
            backlog = int((await conn.execute(q)).scalar_one())
        return {
            "object": "stripe_meter_push",
            "mode": "v2_stream" if self.stream else "v1",
            "cursor_created_at_us": cursor.created_at_us if cursor.created_at_us >= 0 else None,
            "backlog": backlog,
            "rejected": int(await store.state(REJECTED) or 0),
            "lease_holder": await store.state(LEASE),
        }
