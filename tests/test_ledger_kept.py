"""A reservation kept open for its settle (``Ledger.keep_open_s``): with one
request in flight under ``synchronous = FULL``, an early reservation whose
caller settles as soon as its work ends (``settles_soon``) is applied but not
committed; the settle joins its transaction, and one COMMIT (one fsync) makes
both durable. Nothing is acknowledged before that COMMIT; if it never happens,
nothing of either stands. These tests attack the window: a settle that fails
in it, the window running out, other writers arriving in it, a close."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tollway.ledger.ledger as ledger_module
from conftest import settings_for
from ledger_support import reserve_early
from tollway.charge.hold import Charger, Hold, Payer
from tollway.core import inflight
from tollway.core.errors import TollwayError
from tollway.ledger import Ledger, store
from tollway.ledger.riders import Statement
from tollway.runtime import Runtime

pytestmark = pytest.mark.asyncio

_NOOP: Statement[tuple[str]] = Statement("DELETE FROM request_log WHERE id = ?")


@pytest.fixture
async def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Runtime]:
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    r = Runtime.build(settings_for(url, database={"url": url, "sqlite_synchronous": "FULL"}))
    await r.migrate()
    monkeypatch.setattr(inflight, "_n", 1)  # the request being served
    try:
        yield r
    finally:
        await r.close()


async def _funded(ledger: Ledger, amount: int) -> str:
    acct = await ledger.create_account("customer", name="c")
    await ledger.transfer("sys_funding", acct.id, amount)
    return acct.id


async def _ledger(rt: Runtime, window_s: float = 60) -> tuple[Ledger, str]:
    """The runtime's ledger with a window of ``window_s`` (long: it stays open for
    the test unless something ends it), and a customer account funded with 1,000."""
    ledger = rt.ledger
    ledger.keep_open_s = window_s
    return ledger, await _funded(ledger, 1_000)


def _commits(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Each COMMIT on the writer's connection: (on the event loop's thread, its synchronous level)."""
    seen: list[tuple[bool, int]] = []
    real = ledger._commit_sqlite

    def commit() -> None:
        seen.append((threading.current_thread() is threading.main_thread(), ledger._sync_now or 0))
        real()

    monkeypatch.setattr(ledger, "_commit_sqlite", commit)
    return seen


async def _hold(ledger: Ledger, acct: str, amount: int = 50) -> Hold:
    hold = Charger(ledger).hold(Payer(acct), amount, meter="test")
    await hold.reserve(early=True, settles_soon=True)
    await asyncio.sleep(0)  # the writer writes the batch once its caller has gone on
    return hold


async def _balance(ledger: Ledger, acct: str) -> tuple[int, int]:
    a = await ledger.get_account(acct)
    return a.debits_pending, a.debits_posted


async def _zero_sum(ledger: Ledger) -> None:
    assert sum(a.credits_posted - a.debits_posted for a in await ledger.accounts()) == 0
    assert sum(a.credits_pending - a.debits_pending for a in await ledger.accounts()) == 0


async def test_a_settle_commits_its_reservation_with_one_fsync(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, acct = await _ledger(rt)
    commits = _commits(ledger, monkeypatch)
    for take in (10, 20, 30):
        commits.clear()
        hold = await _hold(ledger, acct)
        assert ledger.kept(hold._committing)  # applied, not committed
        assert commits == []
        receipt = await hold.settle(take)
        assert receipt.charged == take
        assert commits == [(True, 2)]  # one COMMIT for the pair, durable (FULL), on the loop
        assert not ledger.kept(hold._committing)
        assert all(f.done() for f in hold._committing)
    assert await _balance(ledger, acct) == (0, 60)
    await _zero_sum(ledger)


async def test_nothing_is_visible_to_other_connections_before_the_commit(rt: Runtime) -> None:
    """Other readers (and processes) see the reservation only once it commits."""
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    path = str(Path(ledger.engine.url.database or ""))
    with sqlite3.connect(path) as other:
        row = other.execute("SELECT debits_pending FROM ledger_accounts WHERE id = ?", (acct,)).fetchone()
        assert row == (0,)
    await hold.settle(7)
    with sqlite3.connect(path) as other:
        row = other.execute(
            "SELECT debits_pending, debits_posted FROM ledger_accounts WHERE id = ?", (acct,)
        ).fetchone()
        assert row == (0, 7)


async def test_when_the_window_runs_out_the_writer_thread_commits_it(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, acct = await _ledger(rt, window_s=0.001)
    commits = _commits(ledger, monkeypatch)
    hold = await _hold(ledger, acct)
    [committed] = hold._committing
    r = await asyncio.wait_for(asyncio.shield(committed), 5)  # no settle came within keep_open_s
    assert not isinstance(r, TollwayError)
    assert commits == [(False, 2)]  # on the writer thread (the loop serves the upstream's answer), FULL
    assert await _balance(ledger, acct) == (50, 0)  # other connections see it now
    await hold.settle(20)  # a settle after the window commits on its own
    assert await _balance(ledger, acct) == (0, 20)
    await _zero_sum(ledger)


async def test_a_settle_that_fails_in_the_window_leaves_nothing_and_says_why(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settle's batch fails in the kept transaction: the ROLLBACK takes the
    reservation with it. The settle reports the database, not a missing
    transfer; no money moved, nothing is left held, and the next call works."""
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    real = store.write_batch
    failures: list[int] = []

    async def write_batch(tx: Any, st: Any, w: Any) -> None:
        if w.resolved_pending and not failures:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        await real(tx, st, w)

    monkeypatch.setattr(ledger_module, "write_batch", write_batch)
    with pytest.raises(TollwayError) as e:
        await hold.settle(30)
    assert e.value.code == "database_unavailable" and e.value.status == 503
    assert failures == [1]
    assert all(isinstance(f.result(), TollwayError) for f in hold._committing)
    assert not ledger._kept and ledger._wconn is not None and not ledger._wconn.in_transaction
    assert await asyncio.wait_for(ledger.write_aside(_NOOP, [("none",)]), 5) == 0  # the connection is free
    assert await _balance(ledger, acct) == (0, 0)
    hold = await _hold(ledger, acct)
    await hold.settle(5)
    assert await _balance(ledger, acct) == (0, 5)
    await _zero_sum(ledger)


async def test_a_release_in_the_window_voids_with_the_same_commit(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, acct = await _ledger(rt)
    commits = _commits(ledger, monkeypatch)
    hold = await _hold(ledger, acct)
    await hold.release()
    assert commits == [(True, 2)]
    assert await _balance(ledger, acct) == (0, 0)
    await _zero_sum(ledger)


async def test_only_soon_settled_reservations_with_one_request_in_flight_are_kept(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain early reservation (a wallet's authorization answers once it has
    committed), or any with another request in flight, commits on its own."""
    ledger, acct = await _ledger(rt)
    t, committed = await reserve_early(ledger, acct, "sys_revenue", 50)
    assert not ledger.kept([committed])
    assert not isinstance(await asyncio.wait_for(committed, 5), TollwayError)
    await ledger.void(t.id)
    monkeypatch.setattr(inflight, "_n", 2)
    hold = await _hold(ledger, acct)
    assert not ledger.kept(hold._committing)
    await hold.confirm()
    await hold.settle(3)
    assert await _balance(ledger, acct) == (0, 3)


async def test_writes_aside_and_riders_wait_for_the_kept_commit(rt: Runtime) -> None:
    """Other users of the writer's connection never start a transaction inside the
    kept one: one waiting ends the window, and runs once it has committed (the
    settle then commits on its own)."""
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    [committed] = hold._committing
    assert await asyncio.wait_for(ledger.write_aside(_NOOP, [("none",)]), 5) == 0
    assert committed.done() and not isinstance(committed.result(), TollwayError)
    assert await _balance(ledger, acct) == (50, 0)
    await hold.settle(4)

    hold = await _hold(ledger, acct)
    [committed] = hold._committing
    assert ledger.ride(_NOOP, [("none",)])
    await asyncio.wait_for(ledger.riders_committed(), 5)  # the riders' batch commits the kept one first
    assert committed.done() and not isinstance(committed.result(), TollwayError)
    await hold.settle(6)
    assert await _balance(ledger, acct) == (0, 10)
    await _zero_sum(ledger)


async def test_after_another_writer_held_the_lock_nothing_is_kept_for_a_while(rt: Runtime) -> None:
    """Another process writing (its write lock found busy) would wait for the
    window: nothing is kept open for a while after."""
    ledger, acct = await _ledger(rt)
    other = sqlite3.connect(str(ledger.engine.url.database), isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(_hold(ledger, acct))
        await asyncio.sleep(0.02)
        other.execute("COMMIT")
        hold = await asyncio.wait_for(first, 10)  # decided on the writer thread, once the lock was free
        await hold.confirm()
        hold2 = await _hold(ledger, acct)
        assert not ledger.kept(hold2._committing)
        await hold.settle(1)
        await hold2.settle(2)
    finally:
        other.close()
    assert await _balance(ledger, acct) == (0, 3)


async def test_a_batch_that_fails_to_load_in_the_window_drops_the_reservation(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    real = store.load_batch
    failures: list[int] = []

    async def load_batch(tx: Any, ops: Any, now_us: int, timeout_s: int) -> Any:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database disk image is malformed")
        return await real(tx, ops, now_us, timeout_s)

    monkeypatch.setattr(ledger_module, "load_batch", load_batch)
    with pytest.raises(TollwayError) as e:
        await hold.settle(30)
    assert e.value.code == "database_unavailable"
    assert await asyncio.wait_for(ledger.write_aside(_NOOP, [("none",)]), 5) == 0
    assert await _balance(ledger, acct) == (0, 0)
    await _zero_sum(ledger)


async def test_close_commits_what_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'close.db'}"
    rt = Runtime.build(settings_for(url, database={"url": url, "sqlite_synchronous": "FULL"}))
    await rt.migrate()
    monkeypatch.setattr(inflight, "_n", 1)
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    await rt.close()
    [committed] = hold._committing
    assert committed.done() and not isinstance(committed.result(), TollwayError)
    with sqlite3.connect(str(tmp_path / "close.db")) as db:
        row = db.execute("SELECT debits_pending FROM ledger_accounts WHERE id = ?", (acct,)).fetchone()
        assert row == (50,)
        assert db.execute("SELECT count(*) FROM ledger_pending").fetchone() == (1,)


async def test_a_settle_joining_the_kept_transaction_reads_no_row_again(rt: Runtime) -> None:
    """The accounts and the pending the reservation loaded and changed are what the
    open transaction holds: the settle's batch takes them from it, not from SELECTs."""
    ledger, acct = await _ledger(rt)
    hold = await _hold(ledger, acct)
    conn = ledger._wconn
    assert conn is not None
    sql: list[str] = []
    conn.set_trace_callback(sql.append)
    try:
        await hold.settle(9)
    finally:
        conn.set_trace_callback(None)
    assert not [s for s in sql if s.lstrip().upper().startswith("SELECT")], sql
    assert any(s.startswith("UPDATE ledger_accounts") for s in sql)
    assert await _balance(ledger, acct) == (0, 9)
    await _zero_sum(ledger)


@pytest.mark.parametrize("fast", [False, True])
async def test_an_ai_calls_hold_settles_soon_unless_its_settle_lingers(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """With ``acknowledge = "fast"`` the settle rides a later batch (up to
    ``linger_s``): keeping its reservation open for it would only add a commit."""
    seen: list[dict[str, Any]] = []

    async def reserve(self: Hold, **kw: Any) -> None:
        seen.append(kw)

    monkeypatch.setattr(Hold, "reserve", reserve)
    monkeypatch.setattr(rt.inference, "linger", fast)
    hold = Charger(rt.ledger).hold(Payer("sys_funding"), 5, meter="test")
    await rt.inference._reserve(None, hold, early=True)  # type: ignore[arg-type]
    assert seen == [{"early": True, "settles_soon": not fast}]
