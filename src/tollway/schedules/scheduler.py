"""The scheduler: persists schedules and runs the due ones, at least once.

A process claims due rows in one statement that sets their lease (status
``running``, a lease token, ``lease_until_us``); only rows still pending, or
running with a lease run out, can be claimed, so two processes never run one
row at once. While a handler runs, its lease is renewed; a process killed
mid-run stops renewing it, and once it runs out another process (or the
same one, restarted) claims the row again. Finishing a run is fenced by the
lease token: a run whose lease was taken over changes nothing.

On PostgreSQL the claim picks rows with ``FOR UPDATE SKIP LOCKED`` (concurrent
claimers take different rows instead of waiting); on SQLite the claim takes
the database's write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import schedules as S
from tollway.core.storage import writer
from tollway.schedules import when
from tollway.schedules.model import OPEN, Schedule, from_mapping, from_row

log = logging.getLogger("tollway.schedules")

Handler = Callable[[Schedule], Awaitable[None]]
Schedules = list[Schedule]  # (the class's own ``list`` method hides the builtin there)
_Claimed = list[tuple[Schedule, str]]
_Outcome = tuple[Schedule, str, str | None]  # the run, its lease token, its error
_Outcomes = list[_Outcome]
_Updates = list[tuple[str, str, dict[str, Any]]]  # id, lease token, new values

US = when.US
MAX_ERROR = 2000
LEASE_LOST = "lease expired: the process running it stopped"


class Scheduler:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        *,
        lease_s: float = 60.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 3600.0,
        timeout_s: float = 300.0,
    ) -> None:
        """``lease_s``: how long a claim holds a row without being renewed;
        ``backoff_s``: the first retry's delay, doubled each retry up to
        ``max_backoff_s``; ``timeout_s``: a handler running longer fails."""
        if lease_s <= 0 or backoff_s < 0 or max_backoff_s < backoff_s or timeout_s <= 0:
            raise ValueError("lease_s and timeout_s must be positive, 0 <= backoff_s <= max_backoff_s")
        self.engine = engine
        self.clock = clock
        self.lease_s = lease_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._handlers: dict[str, Handler] = {}
        self._w = writer(engine)

    # ---------------------------------------------------------------- handlers

    def register(self, task: str, handler: Handler) -> None:
        """The handler that runs ``task``'s schedules in this process (a process
        claims only the tasks it has handlers for)."""
        if not task or len(task) > 100:
            raise ValueError("a task name is 1 to 100 characters")
        self._handlers[task] = handler

    @property
    def tasks(self) -> Sequence[str]:
        return tuple(self._handlers)

    # -------------------------------------------------------------- schedules

    async def schedule(
        self,
        owner: str,
        task: str,
        payload: dict[str, Any],
        *,
        delay_s: float | None = None,
        at_us: int | None = None,
        cron: str | None = None,
        max_attempts: int = 5,
        idempotency_key: str | None = None,
    ) -> Schedule:
        """Persist a schedule: after ``delay_s`` seconds, at ``at_us``, or on
        each occurrence of ``cron`` (five fields, UTC). The same owner and
        ``idempotency_key`` give back the schedule made the first time."""
        now = self.clock.now_us()
        when.check_owner(owner)
        if task not in self._handlers:
            raise invalid("unknown_task", f"no handler is registered for task {task!r}", "task")
        kind, next_run, expr = when.first_run(now, delay_s, at_us, cron)
        body = when.encode_payload(payload)
        key = when.check_key(idempotency_key)
        attempts = when.check_attempts(max_attempts)
        if key is not None:
            seen = await self._by_key(owner, key, task, body)
            if seen is not None:
                return seen
        row = {
            "id": new_id("sched"),
            "owner": owner,
            "task": task,
            "payload": body,
            "kind": kind,
            "cron": expr,
            "next_run_us": next_run,
            "attempts": 0,
            "max_attempts": attempts,
            "status": "pending",
            "last_error": None,
            "lease_token": None,
            "lease_until_us": None,
            "idempotency_key": key,
            "created_us": now,
            "updated_us": now,
        }
        try:
            async with self._w.begin() as conn:
                await conn.execute(S.insert().values(**row))
        except IntegrityError:
            if key is None:
                raise
            seen = await self._by_key(owner, key, task, body)  # a concurrent call with the same key won
            if seen is None:
                raise
            return seen
        return from_mapping(row)

    async def _by_key(self, owner: str, key: str, task: str, body: str) -> Schedule | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(S).where(S.c.owner == owner, S.c.idempotency_key == key))).first()
        if r is None:
            return None
        if r.task != task or r.payload != body:
            raise conflict(
                "idempotency_key_reused",
                "this idempotency_key was used for a different task or payload",
                "idempotency_key",
            )
        return from_row(r)

    async def get(self, owner: str, schedule_id: str) -> Schedule:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(S).where(S.c.id == schedule_id, S.c.owner == owner))).first()
        if r is None:
            raise not_found("schedule_not_found", f"no schedule {schedule_id}", "schedule_id")
        return from_row(r)

    async def find(self, schedule_id: str) -> Schedule:
        """A schedule by id, whoever owns it (for operators)."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(S).where(S.c.id == schedule_id))).first()
        if r is None:
            raise not_found("schedule_not_found", f"no schedule {schedule_id}", "schedule_id")
        return from_row(r)

    async def list(self, owner: str, *, include_done: bool = False, limit: int = 1000) -> Schedules:
        """An owner's schedules, soonest first: open ones (pending, running),
        or all of them."""
        q = select(S).where(S.c.owner == owner)
        if not include_done:
            q = q.where(S.c.status.in_(OPEN))
        return await self._select(q.order_by(S.c.next_run_us, S.c.id).limit(limit))

    async def list_all(
        self, *, owner_prefix: str = "", include_done: bool = False, limit: int = 100
    ) -> Schedules:
        """Everyone's schedules (or those whose owner starts with a prefix), soonest first."""
        q = select(S)
        if owner_prefix:
            q = q.where(S.c.owner.startswith(owner_prefix, autoescape=True))
        if not include_done:
            q = q.where(S.c.status.in_(OPEN))
        return await self._select(q.order_by(S.c.next_run_us, S.c.id).limit(limit))

    async def _select(self, q: Any) -> Schedules:
        async with self.engine.connect() as conn:
            return [from_row(r) for r in await conn.execute(q)]

    async def cancel(self, owner: str, schedule_id: str) -> Schedule:
        """Cancel an open schedule (a run in progress finishes, but is not
        retried or repeated). Cancelling twice is not an error; a schedule
        already done or failed is a 409."""
        now = self.clock.now_us()
        async with self._w.begin() as conn:
            r = (
                await conn.execute(
                    update(S)
                    .where(S.c.id == schedule_id, S.c.owner == owner, S.c.status.in_(OPEN))
                    .values(status="cancelled", lease_token=None, lease_until_us=None, updated_us=now)
                    .returning(*S.c)
                )
            ).first()
        if r is not None:
            return from_row(r)
        s = await self.get(owner, schedule_id)
        if s.status != "cancelled":
            raise conflict(
                "schedule_finished", f"schedule {schedule_id} is already {s.status}", "schedule_id"
            )
        return s

    # ------------------------------------------------------------------ runs

    async def run_due(self, *, limit: int = 100) -> int:
        """Claim up to ``limit`` due schedules of the registered tasks and run
        them concurrently; how many were claimed. Outcomes are recorded as
        runs finish, those that finish together in one transaction."""
        claimed = await self._claim(limit)
        running = {asyncio.create_task(self._call(s, token)) for s, token in claimed}
        try:
            while running:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                try:
                    await self._record([t.result() for t in finished])
                except Exception:  # their leases run out and they are run again
                    log.exception("recording %s schedule runs failed", len(finished))
        finally:
            for t in running:  # cancelled ourselves: the runs stop, their leases run out
                t.cancel()
        return len(claimed)

    async def run(self, interval_s: float) -> None:
        """:meth:`run_due` forever (in the server's lifespan); a failure is
        logged and retried, a handler's exception is the schedule's, not the loop's."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                while await self.run_due() >= 100:  # a full batch: more may be due
                    pass
            except Exception:
                log.exception("running due schedules failed; retrying in %ss", interval_s)

    async def _claim(self, limit: int) -> _Claimed:
        if not self._handlers or limit <= 0:
            return []
        now = self.clock.now_us()
        token = new_id("lease")
        due = or_(
            and_(S.c.status == "pending", S.c.next_run_us <= now),
            and_(S.c.status == "running", S.c.lease_until_us <= now),
        )
        pick = (
            select(S.c.id)
            .where(due, S.c.task.in_(self.tasks))
            .order_by(S.c.next_run_us)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(S)
            .where(S.c.id.in_(pick), due)  # `due` again: a row claimed meanwhile is not taken twice
            .values(
                status="running",
                lease_token=token,
                lease_until_us=now + int(self.lease_s * US),
                attempts=S.c.attempts + 1,
                last_error=case((S.c.status == "running", LEASE_LOST), else_=S.c.last_error),
                updated_us=now,
            )
            .returning(*S.c)
        )
        async with self._w.begin() as conn:
            rows = [from_row(r) for r in await conn.execute(claim)]
        lost: _Outcomes = [(s, token, LEASE_LOST) for s in rows if s.attempts > s.max_attempts]
        if lost:  # their last attempt's process died
            await self._record(lost)
        return [(s, token) for s in rows if s.attempts <= s.max_attempts]

    async def _call(self, s: Schedule, token: str) -> _Outcome:
        """Run the handler, renewing the lease meanwhile; the error, if any."""
        beat = asyncio.create_task(self._heartbeat(s.id, token), name=f"tollway-lease-{s.id}")
        error: str | None = None
        try:
            await asyncio.wait_for(self._handlers[s.task](s), self.timeout_s)
        except Exception as e:
            error = (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)[:MAX_ERROR]
            log.warning("schedule %s (%s) failed, attempt %s: %s", s.id, s.task, s.attempts, error)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        return s, token, error

    async def _heartbeat(self, schedule_id: str, token: str) -> None:
        """Renew the lease while the handler runs (every third of it)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                lease = self.clock.now_us() + int(self.lease_s * US)
                await self._record_values([(schedule_id, token, {"lease_until_us": lease})])
            except Exception:
                log.exception("renewing the lease of schedule %s failed", schedule_id)

    async def _record(self, outcomes: _Outcomes) -> None:
        await self._record_values([(s.id, token, self._outcome(s, error)) for s, token, error in outcomes])

    def _outcome(self, s: Schedule, error: str | None) -> dict[str, Any]:
        """What a run leaves: done; a cron's next occurrence; a retry after
        a backoff; or, the last attempt failed, ``failed`` (a cron moves on to
        its next occurrence, ``last_error`` kept)."""
        now = self.clock.now_us()
        values: dict[str, Any] = {"lease_token": None, "lease_until_us": None}
        if error is not None:
            values["last_error"] = error
        if error is not None and s.attempts < s.max_attempts:
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (s.attempts - 1))
            return {**values, "status": "pending", "next_run_us": now + int(delay * US)}
        if s.kind == "cron" and s.cron is not None:
            return {**values, "status": "pending", "next_run_us": when.next_cron(s.cron, now), "attempts": 0}
        if error is None:
            return {**values, "status": "done"}
        return {**values, "status": "failed", "attempts": min(s.attempts, s.max_attempts)}

    async def _record_values(self, rows: _Updates) -> None:
        """Update running rows, in one transaction, only where this claim
        still holds them (a run whose lease was taken over changes nothing)."""
        now = self.clock.now_us()
        async with self._w.begin() as conn:
            for schedule_id, token, values in rows:
                await conn.execute(
                    update(S)
                    .where(S.c.id == schedule_id, S.c.lease_token == token, S.c.status == "running")
                    .values(updated_us=now, **values)
                )
