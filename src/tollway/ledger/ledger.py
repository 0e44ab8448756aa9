"""The ledger facade: a group-commit writer in front of the database.

Every request is queued; one writer task per process takes everything queued
(up to ``batch_max``), applies it in one transaction — rows locked with
``BEGIN IMMEDIATE`` on SQLite and ``SELECT … FOR UPDATE`` in id order on
PostgreSQL, so several processes can share one database — and acknowledges
each request only after the commit.  A batch that the database refuses is
retried one request at a time, so one bad request never sinks its neighbours.

:meth:`Ledger.chain` commits several transfers as one (all or nothing), and
:meth:`Ledger.queue_chain` also hears a chain's *decision* as soon as the
batch has applied it under the write lock, before the commit: a caller can
start slow work (an upstream call) while the commit runs, and joins the
commit before it shows anyone a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import and_, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core import inflight
from tollway.core.clock import Clock, SystemClock
from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.core.ids import new_id
from tollway.core.money import check_amount
from tollway.core.pointread import PointReader
from tollway.core.schema import ledger_accounts as A
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.core.storage import is_sqlite, sqlite_connect, sqlite_path, writer
from tollway.ledger import errors
from tollway.ledger.apply import Result, apply_batch
from tollway.ledger.ops import CreateTransfer, Op, ResolvePending, Usage
from tollway.ledger.rawsql import DRIVER_ERRORS, inline_tx, raw_transaction, run_inline
from tollway.ledger.riders import Row, Statement
from tollway.ledger.store import (
    ACCOUNT_COLUMNS,
    TRANSFER_COLUMNS,
    account_from_row,
    load_batch,
    select_accounts,
    transfer_from_row,
    write_batch,
)
from tollway.ledger.types import Account, AccountKind, Transfer, default_flags
from tollway.observe import metrics, tracing

T_ = TypeVar("T_")
_Writes = Sequence[tuple[str, Sequence[Any]]]  # (SQL, its rows) for write_aside
BUSY_TIMEOUT_MS = 60_000

log = logging.getLogger("tollway.ledger")

_MAX_KEY = 255


def _db_unavailable(e: Exception) -> TollwayError:
    return TollwayError(
        ErrorType.API, "database_unavailable", f"the ledger could not commit: {e}", status=503
    )


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= _MAX_KEY):
        raise invalid(
            "invalid_idempotency_key", "idempotency key must be 1-255 characters", "idempotency_key"
        )


def _check_timeout(timeout_s: int | None, pending: bool) -> None:
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s <= 0
    ):
        raise invalid("invalid_timeout", "timeout must be a positive integer of seconds", "timeout")
    if timeout_s is not None and not pending:
        raise invalid("invalid_timeout", "timeout applies only to pending transfers", "timeout")


def check_op(op: Op) -> None:
    """Refuse bad input before it is queued (raises ``TollwayError``)."""
    _check_key(op.idempotency_key)
    if isinstance(op, CreateTransfer):
        check_amount(op.amount)
        _check_timeout(op.timeout_s, op.pending)
        if len(op.description) > 500:
            raise invalid("invalid_description", "description is at most 500 characters", "description")
    elif op.amount is not None:
        check_amount(op.amount)


# A queued request: the op, its commit's future, and (queue_chain) its decision's.
_Item = tuple[Op, "asyncio.Future[Result]", "asyncio.Future[Result] | None"]
# Hears a batch's results once applied, before its commit; says whether it woke
# a caller (one that now runs before the commit: see _finish_after_callers).
_Decided = Callable[[list[Result]], bool | None]
_Riders = list[tuple[Statement[Any], list[Any]]] | tuple[()]


def _decided(batch: list[_Item], results: list[Result]) -> bool:
    """Wake the early waiters whose reservation the batch accepted (a refusal
    waits for the commit, so a refused caller never leaves a hold behind).
    Whether any was woken."""
    woke = False
    for (_, _, early), r in zip(batch, results, strict=True):
        if early is not None and not early.done() and isinstance(r, Transfer):
            early.set_result(r)
            woke = True
    return woke


def _chains(batch: list[_Item]) -> list[list[_Item]]:
    """The batch's requests as their chains (a request on its own: a chain of one)."""
    out: list[list[_Item]] = []
    start = 0
    for i, item in enumerate(batch):
        if not item[0].linked:
            out.append(batch[start : i + 1])
            start = i + 1
    if start < len(batch):
        out.append(batch[start:])
    return out


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock | None = None,
        batch_max: int = 2048,
        linger_s: float = 0.002,
        default_timeout_s: int = 300,
    ) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.batch_max = batch_max
        self.default_timeout_s = default_timeout_s
        self._sqlite = is_sqlite(engine)
        self._queue: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._linger: asyncio.TimerHandle | None = None
        # Rows that ride with the next batch's transaction (see ride()), and
        # futures waiting for the riders queued before them to commit.
        self._riders: list[tuple[Statement[Any], list[Any]]] = []
        self._rider_waiters: list[asyncio.Future[None]] = []
        self._riders_writing: asyncio.Future[None] | None = None  # riders of the batch being committed
        self.linger_s = linger_s
        self._task: asyncio.Task[None] | None = None
        self.reads = PointReader(engine)
        self._checkpointer: asyncio.Task[None] | None = None
        # SQLite: each batch runs whole (BEGIN … COMMIT) on one writer thread with
        # its own sqlite3 connection: one thread hop per batch instead of one per
        # statement.
        self._wexec: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        # Jobs submitted to the writer thread and not finished: while there are
        # none, the event loop may use the writer's connection itself (see _decide_inline).
        self._wjobs = 0
        # Set while an inline batch's transaction is open on the writer's
        # connection and its commit not yet handed to the writer thread: other
        # jobs wait for it, so they reach the thread after that commit.
        self._open_inline: asyncio.Future[None] | None = None
        self._sync_level: int | None = None  # the writer connection's PRAGMA synchronous, as configured
        self._sync_now: int | None = None  # and as set now (see _sync_for)
        cols = ", ".join(c.name for c in ACCOUNT_COLUMNS)
        self._select_account = f"SELECT {cols} FROM ledger_accounts"
        self._select_transfer = f"SELECT {', '.join(TRANSFER_COLUMNS)} FROM ledger_transfers"

    # ----------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._task is not None:
            if self._queue:  # let queued requests commit before stopping
                await asyncio.gather(*(f for _, f, _ in self._queue), return_exceptions=True)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.reads.close()
        inflight.not_when_idle(self._when_idle)
        if self._wexec is not None:
            self._wexec.submit(self._close_wconn).result()
            self._wexec.shutdown()
            self._wexec = None

    # ------------------------------------------------------------------ accounts

    async def create_account(
        self,
        kind: AccountKind | str,
        *,
        name: str = "",
        customer_id: str | None = None,
        flags: int | None = None,
        id: str | None = None,
    ) -> Account:
        try:
            k = AccountKind(kind)
        except ValueError:
            raise invalid(
                "invalid_account_kind",
                f"kind must be one of {', '.join(x.value for x in AccountKind)}",
                "kind",
            ) from None
        acct = Account(
            id or new_id("acct"),
            k.value,
            default_flags(k) if flags is None else flags,
            0,
            0,
            0,
            0,
            customer_id,
            name,
            self.clock.now_us(),
        )
        row = {c.name: getattr(acct, c.name) for c in ACCOUNT_COLUMNS}
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(A), [row])
        except IntegrityError:
            raise errors.account_exists(acct.id) from None
        return acct

    async def get_account(self, account_id: str) -> Account:
        row = await self.reads.one(self._select_account + " WHERE id = ?", account_id)
        if row is None:
            raise errors.account_not_found(account_id, "account_id")
        return account_from_row(row)

    async def find_account(self, account_id: str) -> Account | None:
        """:meth:`get_account`, or None where there is no such account."""
        row = await self.reads.one(self._select_account + " WHERE id = ?", account_id)
        return None if row is None else account_from_row(row)

    async def accounts(self, ids: list[str] | None = None) -> list[Account]:
        async with self.engine.connect() as conn:
            return await select_accounts(conn, ids)

    # ----------------------------------------------------------------- transfers

    async def transfer(
        self,
        debit_account_id: str,
        credit_account_id: str,
        amount: int,
        *,
        pending: bool = False,
        timeout_s: int | None = None,
        description: str = "",
        idempotency_key: str | None = None,
        usage: Usage | None = None,
    ) -> Transfer:
        op = CreateTransfer(
            debit_account_id,
            credit_account_id,
            amount,
            pending,
            timeout_s,
            description,
            idempotency_key,
            usage,
        )
        check_op(op)
        return await self._submit(op)

    async def reserve(
        self, debit_account_id: str, credit_account_id: str, amount: int, **kw: Any
    ) -> Transfer:
        """A pending transfer: the amount is held until posted, voided or expired."""
        return await self.transfer(debit_account_id, credit_account_id, amount, pending=True, **kw)

    async def chain(self, ops: Sequence[Op]) -> list[Result]:
        """Commit ``ops`` as one linked chain (TigerBeetle's ``linked`` flag):
        all of them or none. If one is refused, it gets its own error, every
        other one ``linked_event_failed`` naming it, and no balance moves.
        Split legs (``CreateTransfer.split``) divide one amount between
        their accounts under the write lock (see :mod:`tollway.ledger.apply`)."""
        # One batch commits the whole chain: await its futures in turn (no gather).
        return [await c for _, c in self.queue_chain(ops, early=False)]

    def queue_chain(
        self, ops: Sequence[Op], *, early: bool = True
    ) -> list[tuple[asyncio.Future[Result] | None, asyncio.Future[Result]]]:
        """Queue ``ops`` as one linked chain (see :meth:`chain`), in one batch,
        and return (its decision, its commit) for each, as futures, without a
        task of their own. With ``early`` a decision is heard once the batch has
        applied the chain under the write lock, before its commit: the caller
        may start slow work while it commits, but must join the commit before
        showing anyone the result (it can still fail, or, if the batch had to
        be retried, come out differently). A refused chain is told only once
        committed, so a refused caller never leaves a hold behind."""
        for op in ops:
            check_op(op)
        loop = asyncio.get_running_loop()
        out: list[tuple[asyncio.Future[Result] | None, asyncio.Future[Result]]] = []
        last = len(ops) - 1
        for i, op in enumerate(ops):
            op.linked = i < last
            decided: asyncio.Future[Result] | None = loop.create_future() if early else None
            fut: asyncio.Future[Result] = loop.create_future()
            self._queue.append((op, fut, decided))
            out.append((decided, fut))
        if ops:
            self._poke(loop, False)
        return out

    def queue(self, op: Op, *, linger: bool = False) -> asyncio.Future[Result]:
        """Queue one op for the next batch and return its commit's future: the
        :class:`Transfer`, or the :class:`TollwayError` refusing it. No task is
        made: a caller with several ops (a settle's legs) queues them all, so
        they share a batch, then awaits each. Bad input raises here, before
        anything is queued. ``linger``: see :meth:`_enqueue`."""
        check_op(op)
        return self._enqueue(op, linger=linger)

    async def post(
        self,
        pending_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str | None = None,
        usage: Usage | None = None,
        linger: bool = False,
    ) -> Transfer:
        """Take ``amount`` (default: all) of a pending transfer; release the rest.
        ``linger``: see :meth:`_enqueue` (for a settle nobody waits on)."""
        op = ResolvePending(pending_id, True, amount, False, idempotency_key, usage)
        check_op(op)
        return await self._submit(op, linger)

    async def void(
        self,
        pending_id: str,
        *,
        idempotency_key: str | None = None,
        usage: Usage | None = None,
        linger: bool = False,
    ) -> Transfer:
        """Release a pending transfer: nothing is taken."""
        _check_key(idempotency_key)
        return await self._submit(
            ResolvePending(pending_id, False, None, False, idempotency_key, usage), linger
        )

    async def get_transfer(self, transfer_id: str) -> Transfer:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(*T.columns).where(T.c.id == transfer_id))).first()
        if row is None:
            raise errors.transfer_not_found(transfer_id, "transfer_id")
        return transfer_from_row(row)

    async def transfer_by_key(self, idempotency_key: str) -> Transfer | None:
        """The transfer made under an idempotency key, if any (a point read)."""
        row = await self.reads.one(self._select_transfer + " WHERE idempotency_key = ?", idempotency_key)
        return None if row is None else transfer_from_row(row)

    async def resolution_of(self, pending_id: str) -> Transfer | None:
        """The transfer that posted, voided or expired a pending one (None while it is open)."""
        row = await self.reads.one(self._select_transfer + " WHERE pending_id = ?", pending_id)
        return None if row is None else transfer_from_row(row)

    async def history(
        self, account_id: str, *, limit: int = 100, before: str | None = None
    ) -> list[Transfer]:
        """Transfers touching an account, newest first."""
        await self.get_account(account_id)
        cond = or_(T.c.debit_account_id == account_id, T.c.credit_account_id == account_id)
        if before is not None:
            cond = and_(cond, T.c.id < before)
        q = select(*T.columns).where(cond).order_by(T.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [transfer_from_row(r) for r in await conn.execute(q)]

    async def expire_due(self, limit: int = 1000) -> int:
        """Void every pending transfer whose timeout has passed. Returns how many.
        (A scan: ``ledger_pending`` holds only what is open, and has no expiry
        index to keep its rows to one page write each; see migration 0025.)"""
        now = self.clock.now_us()
        q = select(P.c.transfer_id).where(P.c.expires_at_us <= now).order_by(P.c.expires_at_us).limit(limit)
        async with self.engine.connect() as conn:
            due = list((await conn.execute(q)).scalars())
        if not due:
            return 0
        results = await asyncio.gather(*(self._enqueue(ResolvePending(i, False, None, True)) for i in due))
        n = sum(1 for r in results if isinstance(r, Transfer))
        metrics.LEDGER_EXPIRED.inc(n)
        return n

    async def run_expiry(self, interval_s: float) -> None:
        """Sweep expired reservations forever (the server runs this as a task)."""
        while True:
            try:
                await self.expire_due()
            except Exception:  # keep sweeping through a database blip
                log.exception("expiry sweep failed")
            await asyncio.sleep(interval_s)

    # -------------------------------------------------------------- group commit

    def _enqueue(
        self, op: Op, early: asyncio.Future[Result] | None = None, *, linger: bool = False
    ) -> asyncio.Future[Result]:
        """Queue a request for the next batch. Once queued it will be committed
        (or refused) even if the caller stops waiting. ``linger``: nobody is
        waiting on it, so let it ride with the next batch (at most
        ``linger_s`` later) instead of taking a commit of its own."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._queue.append((op, fut, early))
        self._poke(loop, linger)
        return fut

    def _poke(self, loop: asyncio.AbstractEventLoop, linger: bool) -> None:
        """Start the writer if needed and wake it: now, or within ``linger_s``."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._writer(), name="tollway-ledger-writer")
            if self._sqlite and self._checkpointer is None:
                self._checkpointer = loop.create_task(self._checkpoint_loop(), name="tollway-wal")
        assert self._wake is not None
        if not linger:
            self._wake.set()
        elif self._linger is None:
            self._linger = loop.call_later(self.linger_s, self._wake.set)

    def can_ride(self, stmt: Statement[Any]) -> bool:
        """Whether :meth:`ride` takes rows of ``stmt`` here (see ``Statement.postgres``)."""
        return bool((self._sqlite and sqlite_path(self.engine)) or (stmt.postgres and not self._sqlite))

    def ride(self, stmt: Statement[Row], rows: Sequence[Row]) -> bool:
        """Write ``rows`` with ``stmt`` inside the next batch's transaction
        (after its decisions, before its commit; within ``linger_s`` if no
        batch comes), so side tables such as the request log cost no commit of
        their own and never make a ledger batch wait for the write lock. A
        rider that fails is rolled back to its savepoint and logged: it never
        fails the batch. SQLite always; PostgreSQL when the statement says its
        rows carry exactly the column types (``Statement.postgres``). Returns
        False where rows cannot ride (the caller writes them itself)."""
        if not self.can_ride(stmt):
            return False
        if self._riders and self._riders[-1][0] == stmt:
            self._riders[-1][1].extend(rows)  # safe: the writer swaps the list out on this loop
        else:
            self._riders.append((stmt, list(rows)))
        self._poke(asyncio.get_running_loop(), linger=True)
        return True

    async def riders_committed(self) -> None:
        """Wait until every rider queued so far is committed (or dropped),
        including riders a batch being committed right now has taken."""
        writing = self._riders_writing
        if writing is not None and not writing.done():
            await asyncio.shield(writing)
        if not self._riders:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._rider_waiters.append(waiter)
        self._poke(loop, linger=False)
        await waiter

    async def _submit(self, op: Op, linger: bool = False) -> Transfer:
        result = await self._enqueue(op, linger=linger)
        if isinstance(result, TollwayError):
            raise result
        return result

    async def _checkpoint_loop(self, interval_s: float = 0.05) -> None:
        """Copy the SQLite WAL into the database on the other core, off the commit
        path. PASSIVE never blocks the writer or readers. Often, so each one is
        small: with ``synchronous = NORMAL`` a checkpoint first fsyncs all the WAL
        written since the last, and every 250 ms (some 30 MB at 1,400 requests/s)
        that put stalls of milliseconds in the p99 at concurrency 1; every 50 ms
        it does not (docs/benchmarks.md)."""
        path = sqlite_path(self.engine)
        if not path:
            return
        conn = await asyncio.to_thread(sqlite3.connect, path, check_same_thread=False)
        try:
            while True:
                await asyncio.sleep(interval_s)
                job = asyncio.ensure_future(asyncio.to_thread(conn.execute, "PRAGMA wal_checkpoint(PASSIVE)"))
                try:
                    await asyncio.shield(job)
                except asyncio.CancelledError:
                    # Cancelling stops the wait, not the thread: let the running
                    # checkpoint finish before its connection is closed.
                    with contextlib.suppress(Exception):
                        await job
                    raise
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed", exc_info=True)
        finally:
            conn.close()

    async def _writer(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._linger is not None:  # what lingers goes with this batch
                self._linger.cancel()
                self._linger = None
            while self._queue or self._riders:
                cut = min(self.batch_max, len(self._queue))
                while cut < len(self._queue) and self._queue[cut - 1][0].linked:
                    cut += 1  # a chain is never split between batches
                batch = self._queue[:cut]
                del self._queue[:cut]
                riders, self._riders = self._riders, []
                waiters, self._rider_waiters = self._rider_waiters, []
                if riders:  # riders_committed() waits for these too
                    self._riders_writing = asyncio.get_running_loop().create_future()
                    waiters.append(self._riders_writing)
                try:
                    await self._commit_batch(batch, riders)
                finally:
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)

    async def _commit_batch(self, batch: list[_Item], riders: _Riders = ()) -> None:
        ops = [op for op, _, _ in batch]
        t0 = time.perf_counter()
        try:
            # A batch of early reservations only (no riders) is acknowledged to
            # no one outside the process: the settle (or the caller's record)
            # that follows it commits durably and covers it. See _sync_for.
            lazy = bool(batch) and not riders and all(early is not None for _, _, early in batch)
            # The writer's: a root span of its own (nothing runs inside it, so it is not made current).
            sp = tracing.start(
                "ledger.batch",
                attributes={"tollway.ledger.batch_size": len(batch), "tollway.ledger.riders": len(riders)},
                root=True,
            )
            try:
                results = await self._apply(ops, lambda rs: _decided(batch, rs), riders, lazy=lazy)
            except BaseException as e:
                tracing.end(sp, e)
                raise
            tracing.end(sp)
        except DRIVER_ERRORS as e:
            if riders:
                log.warning("dropping %d rider rows with a failed ledger batch: %s", len(riders), e)
            if not batch:
                return
            chains = _chains(batch)
            if len(chains) > 1:
                # Isolate the request (or chain) the database refused; the rest still commit.
                for c in chains:
                    await self._commit_batch(c)
                return
            results = await self._retry_alone(ops, e)
        except Exception as e:  # never leave a caller waiting forever
            log.exception("ledger batch failed")
            results = [_db_unavailable(e)] * len(batch)
        metrics.LEDGER_COMMIT_SECONDS.observe(time.perf_counter() - t0)
        metrics.LEDGER_BATCH_SIZE.observe(len(batch))
        ok = 0
        for (_, fut, early), r in zip(batch, results, strict=True):
            if isinstance(r, Transfer):
                ok += 1
            if not fut.done():
                fut.set_result(r)
            if early is not None and not early.done():
                early.set_result(r)
        metrics.LEDGER_OPS_OK.inc(ok)
        if len(batch) - ok:
            metrics.LEDGER_OPS_REJECTED.inc(len(batch) - ok)

    async def _retry_alone(self, ops: list[Op], first: Exception) -> list[Result]:
        """One request, or one chain, in batches of its own until it commits."""
        err: Exception = first
        for attempt in range(5):
            await asyncio.sleep(0.001 * 2**attempt)
            try:
                return await self._apply(ops, None)
            except DRIVER_ERRORS as e:
                err = e
        log.error("ledger request failed after retries: %s", err)
        return [_db_unavailable(err)] * len(ops)

    async def _apply(
        self, ops: list[Op], decided: _Decided | None, riders: _Riders = (), *, lazy: bool = False
    ) -> list[Result]:
        """Apply one batch in one transaction; ``decided`` hears the results
        once applied under the write lock, before the commit (``riders``:
        SQLite only, see :meth:`ride`). ``lazy``: the commit need not wait for
        the disk (see :meth:`_sync_for`)."""
        loop = asyncio.get_running_loop()
        if self._sqlite and sqlite_path(self.engine):
            self._start_writer_thread()
            tell: _Decided | None = None
            if decided is not None:
                hear = decided

                def tell(rs: list[Result]) -> None:  # from the writer thread
                    loop.call_soon_threadsafe(hear, rs)

            now = self.clock.now_us()
            if decided is not None and ops and self._wjobs == 0:
                started = self._decide_inline(ops, now, lazy)
                if started is not None:
                    inline, state, written = started
                    await self._finish_after_callers(decided, inline, state, written, riders, lazy)
                    return inline
            return await self._on_writer(self._apply_sqlite, ops, now, tell, riders, lazy)
        results: list[Result] = []
        async with raw_transaction(self.engine) as tx:
            if lazy:  # PostgreSQL: this commit need not wait for the WAL flush
                await tx.execute("SET LOCAL synchronous_commit = off", ())
            if ops:
                st = await load_batch(tx, ops, self.clock.now_us(), self.default_timeout_s)
                results, writes = apply_batch(ops, st)
                if decided is not None:
                    decided(results)
                await write_batch(tx, st, writes)
            for stmt, rows in riders:  # PostgreSQL riders, each in a savepoint
                try:
                    async with tx.driver.transaction():
                        await tx.executemany(stmt.pg_sql, rows)
                except asyncpg.PostgresError:
                    log.exception("dropping %d rider rows", len(rows))
        return results

    async def _on_writer(self, fn: Callable[..., T_], *args: Any) -> T_:
        """Run ``fn`` on the writer thread, counting it while it is queued or running."""
        assert self._wexec is not None
        self._wjobs += 1
        try:
            while self._open_inline is not None:  # behind the open inline batch's commit
                await asyncio.wait([self._open_inline])
            return await asyncio.get_running_loop().run_in_executor(self._wexec, fn, *args)
        finally:
            self._wjobs -= 1

    async def _finish_after_callers(
        self,
        decided: _Decided,
        inline: list[Result],
        state: Any,
        written: Any,
        riders: _Riders,
        lazy: bool = False,
    ) -> None:
        """Tell the callers an inline batch's decisions and let any it woke run
        first (one loop turn: they go on to their own I/O; a batch that woke
        no one, a settle's, goes straight on), then write the batch and
        its riders here, on the event loop, and hand only the COMMIT to the
        writer thread, ahead of any job submitted meanwhile.

        Python work on the writer thread contends for the GIL with the event
        loop: written there, an inline batch took ~0.7 ms to commit at
        concurrency 1 and the next request's reservation queued behind it. A
        COMMIT holds the GIL only to start and to end (SQLite releases it for
        the WAL write and the fsync). Where a commit does not fsync
        (``synchronous`` NORMAL or OFF: a WAL append), it runs here too, and so
        does one that fsyncs while no other HTTP request is in flight and no
        batch waits (:mod:`tollway.core.inflight`): the loop has nothing to do
        during that fsync, and the thread round trip (~70 µs) is saved."""
        assert self._wexec is not None
        conn = self._wconn
        assert conn is not None
        loop = asyncio.get_running_loop()
        gate = self._open_inline = loop.create_future()
        self._wjobs += 1
        try:
            job: asyncio.Future[None] | None = None
            try:
                if decided(inline):
                    await asyncio.sleep(0)
            finally:  # cancelled or not, the open transaction goes on to its COMMIT
                try:
                    run_inline(write_batch(inline_tx(conn), state, written))
                    self._write_riders(conn, riders)
                    if self._commit_fsyncs and not lazy and (inflight.count() > 1 or self._queue):
                        job = loop.run_in_executor(self._wexec, self._commit_sqlite)
                    else:
                        self._commit_sqlite()
                        if lazy and self._commit_fsyncs and inflight.count() <= 1:
                            # A reservation's caller is at its upstream call now, and its
                            # settle will fsync: set the level for it here, not on its path.
                            with contextlib.suppress(sqlite3.OperationalError):  # busy: later
                                self._sync_for(conn, False)
                except BaseException:  # nothing was handed to the thread
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._open_inline = None
                    gate.set_result(None)
            if job is not None:
                await job
        finally:
            self._wjobs -= 1

    @property
    def _commit_fsyncs(self) -> bool:
        """Whether a COMMIT on the writer's connection waits for the disk: in WAL
        mode only ``synchronous`` FULL (2) and EXTRA (3) fsync at each commit."""
        return self._configured_sync() >= 2

    def _configured_sync(self) -> int:
        """The connection's ``PRAGMA synchronous`` as configured (read once)."""
        if self._sync_level is None:
            assert self._wconn is not None
            self._sync_level = self._sync_now = int(self._wconn.execute("PRAGMA synchronous").fetchone()[0])
        return self._sync_level

    def _sync_for(self, conn: sqlite3.Connection, lazy: bool) -> None:
        """Before BEGIN (SQLite refuses to change it inside a transaction): a
        lazy batch commits with ``synchronous = NORMAL``, a WAL append that
        survives a crash of this process, without the fsync. The next batch
        that fsyncs (FULL) makes it durable against power loss too, since one
        fsync of the WAL covers every frame before it. Lazy batches hold only
        early reservations, whose callers settle (or record) durably before
        they report anything; a reservation lost to a power cut was never
        reported, and the call it held for was not charged."""
        level = min(self._configured_sync(), 1) if lazy else self._configured_sync()
        if level != self._sync_now:
            conn.execute(f"PRAGMA synchronous={level}")
            self._sync_now = level

    def _decide_inline(
        self, ops: list[Op], now_us: int, lazy: bool = False
    ) -> tuple[list[Result], Any, Any] | None:
        """Decide a batch on the event loop, with the writer's connection, while
        the writer thread is idle: BEGIN IMMEDIATE, load, apply. The decision
        then costs no thread round trip (see :meth:`_finish_after_callers` for
        the rest). Batches of any size: on the writer thread a large batch got
        the GIL only in the interpreter's 5 ms slices while the loop served
        requests (at concurrency 64, 128 ops took ~25 ms and every request
        waited for it). If the database's write lock is held (another process),
        nothing waits here: None, and the batch takes the writer thread, which
        waits for the lock."""
        conn = self._writer_conn()
        if not self._begin_now(conn, lazy):
            return None
        try:
            st = run_inline(load_batch(inline_tx(conn), ops, now_us, self.default_timeout_s))
            results, writes = apply_batch(ops, st)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results, st, writes

    def _commit_sqlite(self) -> None:
        """An inline batch's COMMIT (the writer thread, or the loop if it does not fsync)."""
        conn = self._wconn
        assert conn is not None
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_riders(conn: sqlite3.Connection, riders: _Riders) -> None:
        for stmt, rows in riders:
            conn.execute("SAVEPOINT rider")
            try:
                conn.executemany(stmt.sql, rows)
            except sqlite3.Error:
                log.exception("dropping %d rider rows", len(rows))
                conn.execute("ROLLBACK TO rider")
            conn.execute("RELEASE rider")

    def _apply_sqlite(
        self,
        ops: list[Op],
        now_us: int,
        decided: _Decided | None,
        riders: _Riders = (),
        lazy: bool = False,
    ) -> list[Result]:
        """One batch on the writer thread: BEGIN IMMEDIATE, load, apply, write, COMMIT."""
        conn = self._writer_conn()
        self._begin_waiting(conn, lazy)
        results: list[Result] = []
        try:
            if ops:
                tx = inline_tx(conn)
                st = run_inline(load_batch(tx, ops, now_us, self.default_timeout_s))
                results, writes = apply_batch(ops, st)
                if decided is not None:
                    decided(results)
                run_inline(write_batch(tx, st, writes))
            self._write_riders(conn, riders)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def write_aside(
        self, stmt: Statement[Row], rows: Sequence[Row], *, lazy: bool = False
    ) -> int | None:
        """SQLite: run ``stmt`` with ``rows`` in a transaction of their own on the ledger's
        writer thread, between batches, so the database keeps one writer and
        nobody sleeps in SQLite's busy handler (its back-off costs milliseconds).
        Returns the rows changed, or None where there is no such thread
        (PostgreSQL, in-memory): the caller writes through its own connection.
        ``lazy``: the commit survives a crash of this process but need not wait
        for the disk (see :meth:`_sync_for`), for rows whose loss to a power cut
        is harmless."""
        done = await self.write_aside_each([(stmt, rows)], lazy=lazy)
        return None if done is None else done[0]

    async def write_aside_each(
        self, writes: Sequence[tuple[Statement[Any], Sequence[Any]]], *, lazy: bool = False
    ) -> list[int] | None:
        """:meth:`write_aside` for several statements, in order, in one
        transaction (one commit): the rows each changed. A lazy one runs here
        on the event loop while the writer thread is idle (see
        :meth:`_write_aside_inline`)."""
        if not (self._sqlite and sqlite_path(self.engine)):
            return None
        plain = [(stmt.sql, rows) for stmt, rows in writes]
        if lazy and self._wjobs == 0 and self._open_inline is None:
            done = self._write_aside_inline(plain)
            if done is not None:
                return done
        self._start_writer_thread()
        return await self._on_writer(self._write_aside, plain, lazy)

    def _write_aside_inline(self, writes: _Writes) -> list[int] | None:
        """A lazy write while the writer thread is idle, here on the event loop: its
        COMMIT is a WAL append (no fsync), so a thread round trip would cost more
        than the write, and the writer stays free for the next batch to be decided
        inline (:meth:`_decide_inline`). None if another process holds the write
        lock: nothing waits here, the thread does."""
        conn = self._writer_conn()
        if not self._begin_now(conn, True):
            return None
        return _rows_committed(conn, writes)

    def _write_aside(self, writes: _Writes, lazy: bool = False) -> list[int]:
        conn = self._writer_conn()
        self._begin_waiting(conn, lazy)
        return _rows_committed(conn, writes)

    def _begin_now(self, conn: sqlite3.Connection, lazy: bool) -> bool:
        """On the loop: the level for the batch (:meth:`_sync_for`), then BEGIN
        IMMEDIATE; False, with nothing begun, if the database is busy (another
        process's write lock): the batch goes to the writer thread."""
        return _not_busy(self._sync_for, conn, lazy) and _not_busy(conn.execute, "BEGIN IMMEDIATE")

    def _begin_waiting(self, conn: sqlite3.Connection, lazy: bool) -> None:
        """On the writer thread: the same, waiting while the database is busy."""
        _waiting(self._sync_for, conn, lazy)
        _waiting(conn.execute, "BEGIN IMMEDIATE")

    def _start_writer_thread(self) -> None:
        """The SQLite writer thread, made on first use (on the event loop)."""
        if self._wexec is None:
            self._wexec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollway-ledger")
            inflight.when_idle(self._when_idle)

    def _writer_conn(self) -> sqlite3.Connection:
        """The writer's connection, with no busy timeout: on the loop, a statement that
        finds the database busy (another process's write lock; a WAL recovery) must
        not wait (:func:`_not_busy`: the batch goes to the thread),
        and the writer thread waits itself (:func:`_waiting`). (Setting the timeout to
        0 and back around each loop BEGIN cost two PRAGMAs a batch, ~10 us.)"""
        if self._wconn is None:
            self._wconn = sqlite_connect(self.engine, shared=True)
            self._wconn.execute("PRAGMA busy_timeout=0")
        return self._wconn

    def _when_idle(self) -> None:
        """The last response is out (no HTTP request in flight): set the writer's
        connection to the lazy level now, for the next request's reservation, rather
        than on that request's path (:meth:`_sync_for` still checks at every batch)."""
        conn = self._wconn
        if conn is None or self._wjobs or self._open_inline is not None or self._queue:
            return
        if not conn.in_transaction:
            _not_busy(self._sync_for, conn, True)

    def _close_wconn(self) -> None:
        self._sync_level = self._sync_now = None
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None


def _busy(e: sqlite3.OperationalError) -> bool:
    return e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _not_busy(fn: Callable[..., object], *args: Any) -> bool:
    """On the loop: ``fn(*args)``, or False if the database is busy (nothing waits)."""
    try:
        fn(*args)
    except sqlite3.OperationalError as e:
        if not _busy(e):
            raise
        return False
    return True


def _waiting(fn: Callable[..., T_], *args: Any) -> T_:
    """On the writer thread: ``fn(*args)``, waiting up to ``BUSY_TIMEOUT_MS`` while the
    database is busy (another process's write lock), with back-off as SQLite's own
    busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            return fn(*args)
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.025)


def _rows_committed(conn: sqlite3.Connection, writes: _Writes) -> list[int]:
    """In the transaction just begun: each statement with its rows, COMMIT; the rows each changed."""
    try:
        done = [conn.executemany(sql, rows).rowcount for sql, rows in writes]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done
