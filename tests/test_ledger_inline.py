"""Where a SQLite batch runs: decided and written on the event loop while the
writer thread is idle, with only the COMMIT on the writer thread when it fsyncs
(docs/architecture.md, "The ledger"). These tests pin the behaviour that the
gateway's latency depends on, and that money stays exact on every path."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tollway.ledger.ledger as ledger_module
from conftest import settings_for
from ledger_support import reserve_early
from tollway.core import inflight
from tollway.core.errors import TollwayError
from tollway.gateway.requestlog import RequestLog
from tollway.ledger import Ledger
from tollway.runtime import Runtime

pytestmark = pytest.mark.asyncio


async def _runtime(tmp_path: Path, synchronous: str) -> AsyncIterator[Runtime]:
    url = f"sqlite:///{tmp_path / 'inline.db'}"
    rt = Runtime.build(settings_for(url, database={"url": url, "sqlite_synchronous": synchronous}))
    await rt.migrate()
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture(params=["FULL", "NORMAL"])
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    async for r in _runtime(tmp_path, request.param):
        yield r


@pytest.fixture
async def rt_normal(tmp_path: Path) -> AsyncIterator[Runtime]:
    async for r in _runtime(tmp_path, "NORMAL"):
        yield r


async def _funded(ledger: Ledger, amount: int) -> str:
    acct = await ledger.create_account("customer", name="c")
    await ledger.transfer("sys_funding", acct.id, amount)
    return acct.id


async def test_batches_of_any_size_are_decided_on_the_loop_and_commit_where_the_fsync_is(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 concurrent reservations and settles: every batch is decided on the
    loop (none runs whole on the writer thread); while HTTP requests are in
    flight (two, here) a COMMIT that fsyncs (FULL) runs on the writer thread,
    one that does not (NORMAL, or a batch of early reservations only, committed
    lazily) on the loop; and every micro-dollar is where it should be."""
    monkeypatch.setattr(inflight, "_n", 2)
    ledger = rt.ledger
    accounts = [await _funded(ledger, 10_000) for _ in range(5)]
    commits_on: list[bool] = []  # True: on the event loop's thread
    whole_on_thread: list[int] = []
    real_commit, real_apply = ledger._commit_sqlite, ledger._apply_sqlite

    fsyncs: list[bool] = []  # per commit: did it wait for the disk (synchronous >= FULL)

    def commit() -> None:
        commits_on.append(threading.current_thread() is threading.main_thread())
        fsyncs.append((ledger._sync_now or 0) >= 2)
        real_commit()

    def apply_on_thread(ops: list[Any], *a: Any) -> Any:
        whole_on_thread.append(len(ops))
        return real_apply(ops, *a)

    monkeypatch.setattr(ledger, "_commit_sqlite", commit)
    monkeypatch.setattr(ledger, "_apply_sqlite", apply_on_thread)

    async def one(i: int) -> int:
        acct = accounts[i % len(accounts)]
        t, committed = await reserve_early(ledger, acct, "sys_revenue", 30)
        await committed
        take = 1 + i % 30
        await ledger.post(t.id, take)
        return take

    taken = sum(await asyncio.gather(*(one(i) for i in range(300))))
    assert whole_on_thread == []
    assert commits_on and all(on_loop != fsync for on_loop, fsync in zip(commits_on, fsyncs, strict=True))
    if rt.settings.database.sqlite_synchronous == "NORMAL":
        assert not any(fsyncs)
    else:  # the posts fsync; the reservations alone commit lazily
        assert any(fsyncs) and not all(fsyncs)
    revenue = await ledger.get_account("sys_revenue")
    assert revenue.credits_posted == taken and revenue.credits_pending == 0
    for acct in accounts:
        a = await ledger.get_account(acct)
        assert a.debits_pending == 0 and a.balance == 10_000 - a.debits_posted
    assert sum(a.credits_posted - a.debits_posted for a in await ledger.accounts()) == 0


@pytest.mark.parametrize("in_flight", [0, 1, 2])
async def test_with_no_other_request_in_flight_a_durable_commit_runs_on_the_loop(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """One request at a time (the settle's own request in flight, or none): the
    loop has nothing else to serve during the fsync, so the COMMIT runs there
    (no thread round trip), and still fsyncs under FULL; with another request
    in flight it goes to the writer thread. The money is exact either way."""
    monkeypatch.setattr(inflight, "_n", in_flight)
    ledger = rt.ledger
    acct = await _funded(ledger, 1_000)
    seen: list[tuple[bool, bool]] = []  # per commit: (on the loop, fsynced)
    real_commit = ledger._commit_sqlite

    def commit() -> None:
        seen.append((threading.current_thread() is threading.main_thread(), (ledger._sync_now or 0) >= 2))
        real_commit()

    monkeypatch.setattr(ledger, "_commit_sqlite", commit)
    for take in (10, 20, 30):
        t, committed = await reserve_early(ledger, acct, "sys_revenue", 50)
        await committed
        await ledger.post(t.id, take)
    durable = [on_loop for on_loop, fsynced in seen if fsynced]
    if rt.settings.database.sqlite_synchronous == "NORMAL":
        assert durable == [] and all(on_loop for on_loop, _ in seen)
    else:
        assert len(durable) == 3 and all(on_loop == (in_flight <= 1) for on_loop in durable)
    a = await ledger.get_account(acct)
    assert a.debits_posted == 60 and a.debits_pending == 0 and a.balance == 940


async def test_only_a_batch_that_woke_early_callers_gives_them_a_turn_before_its_commit(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early reservation's batch lets its woken caller run (to its upstream
    call) before the batch is written and committed; a settle's batch woke no
    one, so it goes from its decision to its COMMIT without a loop turn."""
    monkeypatch.setattr(inflight, "_n", 1)
    ledger = rt.ledger
    acct = await _funded(ledger, 1_000)
    turns = 0

    async def ticker() -> None:  # counts the event loop's turns
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    decided_at: list[int] = []
    committed_at: list[int] = []
    real_decide, real_commit = ledger._decide_inline, ledger._commit_sqlite

    def decide(*a: Any, **k: Any) -> Any:
        out = real_decide(*a, **k)
        decided_at.append(turns)
        return out

    def commit() -> None:
        committed_at.append(turns)
        real_commit()

    monkeypatch.setattr(ledger, "_decide_inline", decide)
    monkeypatch.setattr(ledger, "_commit_sqlite", commit)
    tick = asyncio.ensure_future(ticker())
    try:
        await asyncio.sleep(0)
        t, committed = await reserve_early(ledger, acct, "sys_revenue", 50)
        await committed
        await ledger.post(t.id, 20)
    finally:
        tick.cancel()
    assert len(decided_at) == len(committed_at) == 2
    (reserve_decided, settle_decided), (reserve_committed, settle_committed) = decided_at, committed_at
    assert reserve_committed > reserve_decided  # its caller ran first
    assert settle_committed == settle_decided  # nobody to wake: straight to the COMMIT
    a = await ledger.get_account(acct)
    assert a.debits_posted == 20 and a.debits_pending == 0 and a.balance == 980


async def test_the_telemetry_layer_counts_the_requests_in_flight_and_always_uncounts_them() -> None:
    """What the ledger reads (core/inflight): every HTTP request the one telemetry
    layer serves is counted while it runs, a failing one uncounted too, a scope
    it has already seen (a paid route coming back in) counted once."""
    from tollway.api.telemetry import TelemetryMiddleware

    seen: list[int] = []
    all_in, release = asyncio.Event(), asyncio.Event()

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(inflight.count())
        if len(seen) == 3:
            all_in.set()
        await release.wait()
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = TelemetryMiddleware(inner)
    again = TelemetryMiddleware(mw)  # the same request through a second layer

    async def sent(_: Any) -> None:
        return None

    def scope(path: str) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": path, "headers": []}

    start = inflight.count()
    routes = ((mw, "/a"), (again, "/b"), (mw, "/boom"))
    calls = [asyncio.ensure_future(app(scope(p), None, sent)) for app, p in routes]
    await all_in.wait()
    assert inflight.count() == start + 3 and sorted(seen) == [start + 1, start + 2, start + 3]
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(r) for r in results] == [type(None), type(None), RuntimeError]
    assert inflight.count() == start


def _pragmas_into(seen: list[str], sql: str) -> None:
    if sql.startswith("PRAGMA synchronous"):
        seen.append(sql)


async def test_the_synchronous_level_is_set_ahead_of_the_batch_that_needs_it(tmp_path: Path) -> None:
    """One request at a time under FULL: a reservation commits lazily (NORMAL), a
    settle durably (FULL). Each level is set while nothing waits for it (after the
    reservation's commit, while its caller is at the upstream; once the last response
    is out, for the next reservation), so neither batch runs a PRAGMA on its path."""
    async for rt in _runtime(tmp_path, "FULL"):
        ledger = rt.ledger
        acct = await _funded(ledger, 1_000)
        conn = ledger._wconn
        assert conn is not None
        pragmas: list[str] = []
        conn.set_trace_callback(functools.partial(_pragmas_into, pragmas))
        for take in (10, 20, 30):
            inflight.enter()  # the request the gateway serves
            try:
                pragmas.clear()
                t, committed = await reserve_early(ledger, acct, "sys_revenue", 50)
                assert pragmas == [] or take == 10  # the first finds the level the funding left
                await committed
                assert ledger._sync_now == 2  # set for the settle, after the reservation's commit
                pragmas.clear()
                await ledger.post(t.id, take)
                assert pragmas == []  # the settle's path: no PRAGMA
            finally:
                inflight.leave()
            await asyncio.sleep(0)  # the idle hook runs once the response is out
            assert ledger._sync_now == 1
        a = await ledger.get_account(acct)
        assert a.debits_posted == 60 and a.balance == 940


async def test_an_idle_hook_runs_on_its_own_loop_only() -> None:
    """inflight.when_idle: the hook runs on the loop that registered it, once the count
    drops to zero there; a server on another thread's loop (as tests run them) dropping
    to zero does not call it across threads."""
    ran: list[str] = []

    def hook() -> None:
        ran.append(threading.current_thread().name)

    inflight.when_idle(hook)
    try:

        async def elsewhere() -> None:
            inflight.enter()
            inflight.leave()
            await asyncio.sleep(0)

        t = threading.Thread(target=asyncio.run, args=(elsewhere(),), name="other-loop")
        t.start()
        t.join()
        await asyncio.sleep(0)
        assert ran == []
        inflight.enter()
        inflight.enter()
        inflight.leave()
        await asyncio.sleep(0)
        assert ran == []  # one still in flight
        inflight.leave()
        await asyncio.sleep(0)
        assert ran == [threading.current_thread().name]
    finally:
        inflight.not_when_idle(hook)
    inflight.enter()
    inflight.leave()
    await asyncio.sleep(0)
    assert len(ran) == 1  # unregistered


async def test_another_process_s_write_lock_is_waited_for_on_the_thread_not_the_loop(rt: Runtime) -> None:
    """The writer's connection has no busy timeout, so the loop's BEGIN never waits; a
    batch that meets another process's write lock goes to the writer thread, which
    waits for it (with backoff) while the loop goes on serving, then commits once."""
    ledger = rt.ledger
    acct = await _funded(ledger, 1_000)
    assert ledger._wconn is not None and ledger._wconn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    other = sqlite3.connect(rt.settings.database.url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        transfer = asyncio.create_task(ledger.transfer(acct, "sys_revenue", 7))
        await asyncio.sleep(0.3)
        assert not transfer.done() and ticks >= 10  # waiting, and not on the loop
        other.execute("COMMIT")
        assert (await asyncio.wait_for(transfer, 10)).amount == 7
    finally:
        ticker.cancel()
        other.close()
    assert (await ledger.get_account(acct)).balance == 993


async def test_a_busy_database_before_begin_sends_the_batch_to_the_thread_which_waits(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a busy timeout, a PRAGMA that finds the database busy (a WAL recovery in
    another process) fails at once: on the loop the batch goes to the writer thread
    instead, which retries until it is not busy; the op commits once."""
    ledger = rt.ledger
    acct = await _funded(ledger, 1_000)
    real = ledger._sync_for
    calls: list[str] = []

    def busy_twice(conn: sqlite3.Connection, lazy: bool) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            e = sqlite3.OperationalError("database is locked")
            e.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise e
        real(conn, lazy)

    monkeypatch.setattr(ledger, "_sync_for", busy_twice)
    assert (await ledger.transfer(acct, "sys_revenue", 7)).amount == 7
    main = threading.main_thread().name
    assert calls[0] == main and calls[1] != main and calls[2] == calls[1]  # loop, then thread, retried
    monkeypatch.setattr(ledger, "_sync_for", real)
    assert (await ledger.get_account(acct)).balance == 993
    assert len([t for t in await ledger.history(acct) if t.amount == 7]) == 1


async def test_a_write_that_fails_after_the_decision_rolls_back_and_the_op_commits_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's writes fail on the loop after its callers heard the decision:
    the transaction is rolled back (the connection is left clean), the op is
    retried alone and committed exactly once (under a new id, which the commit
    future carries)."""
    ledger = rt.ledger
    acct = await _funded(ledger, 1_000)
    real_write = ledger_module.write_batch
    failures = [sqlite3.OperationalError("disk I/O error")]

    async def write_batch(*a: Any) -> None:
        if failures:
            raise failures.pop()
        await real_write(*a)

    monkeypatch.setattr(ledger_module, "write_batch", write_batch)
    t, committed = await reserve_early(ledger, acct, "sys_revenue", 300, idempotency_key="k1")
    assert t.amount == 300
    final = await committed  # the retry's transfer: Hold.confirm takes it as the real one
    assert not isinstance(final, TollwayError)
    assert (final.amount, final.idempotency_key, final.kind) == (300, "k1", "pending")
    assert failures == []
    assert ledger._wconn is not None and not ledger._wconn.in_transaction
    a = await ledger.get_account(acct)
    assert (a.balance, a.debits_pending) == (1_000, 300)
    again = await ledger.reserve(acct, "sys_revenue", 300, idempotency_key="k1")
    assert again.id == final.id  # the same transfer, not a second hold
    assert (await ledger.get_account(acct)).debits_pending == 300


def _logged(rt: Runtime) -> int:
    db = rt.settings.database.url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM request_log").fetchone()[0])


def _record(log: RequestLog, n: int) -> None:
    for i in range(n):
        e = log.start("chat.completions")
        e.status, e.model = 200, f"m{i}"
        log.record(e)


async def test_request_log_rows_wait_for_flush_ms_not_for_the_next_ledger_batch(
    rt_normal: Runtime,
) -> None:
    """A row does not ride with the next ledger batch (that put the log's five
    b-tree pages into every commit): rows gather for log_flush_ms, and flush()
    (what GET /admin/requests calls) writes them at once."""
    ledger = rt_normal.ledger
    log = RequestLog(rt_normal.engine, rt_normal.clock, 60_000, 0, ledger)
    _record(log, 5)
    acct = await _funded(ledger, 100)
    await ledger.transfer(acct, "sys_revenue", 1)  # a batch commits: the rows are not in it
    await ledger.riders_committed()
    assert _logged(rt_normal) == 0
    await log.flush()
    assert _logged(rt_normal) == 5
    await log.close()


async def test_request_log_rows_reach_the_database_within_flush_ms(rt_normal: Runtime) -> None:
    """No flush() needed: after log_flush_ms the rows ride with a batch (or alone)."""
    log = RequestLog(rt_normal.engine, rt_normal.clock, 50, 0, rt_normal.ledger)
    _record(log, 5)
    for _ in range(200):  # liveness only
        if _logged(rt_normal) == 5:
            break
        await asyncio.sleep(0.02)
    assert _logged(rt_normal) == 5
    await log.close()
