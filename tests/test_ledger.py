"""The ledger as a library: two-phase transfers, bounds, idempotency, expiry."""

from __future__ import annotations

import asyncio

import pytest

from ledger_support import reserve_early
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.ledger import Ledger
from tollway.ledger.ops import Usage
from tollway.ledger.riders import Statement
from tollway.runtime import Runtime

pytestmark = pytest.mark.asyncio


async def funded(ledger: Ledger, amount: int = 1_000) -> str:
    acct = await ledger.create_account("customer", name="c")
    if amount:
        await ledger.transfer("sys_funding", acct.id, amount)
    return acct.id


async def sum_of_balances(ledger: Ledger) -> int:
    return sum(a.credits_posted - a.debits_posted for a in await ledger.accounts())


async def codes(coro: object) -> str:
    with pytest.raises(TollwayError) as e:
        await coro  # type: ignore[misc]
    return e.value.code


async def test_single_phase_moves_money_and_sums_to_zero(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 500)
    t = await L.transfer(a, "sys_revenue", 200, description="x")
    assert t.kind == "posted" and t.amount == 200
    acct = await L.get_account(a)
    assert (acct.balance, acct.available) == (300, 300)
    assert (await L.get_account("sys_revenue")).balance == 200
    assert await sum_of_balances(L) == 0


async def test_pending_then_full_post(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 60)
    acct = await L.get_account(a)
    assert (acct.balance, acct.available, acct.debits_pending) == (100, 40, 60)
    post = await L.post(p.id)
    assert post.kind == "post_pending" and post.amount == 60 and post.pending_id == p.id
    acct = await L.get_account(a)
    assert (acct.balance, acct.available, acct.debits_pending) == (40, 40, 0)


async def test_partial_post_releases_the_rest(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 60)
    await L.post(p.id, 25)
    acct = await L.get_account(a)
    assert (acct.balance, acct.available, acct.debits_pending) == (75, 75, 0)
    rev = await L.get_account("sys_revenue")
    assert (rev.credits_posted, rev.credits_pending) == (25, 0)


async def test_void_releases_everything(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 60)
    v = await L.void(p.id)
    assert v.kind == "void_pending" and v.amount == 60
    acct = await L.get_account(a)
    assert (acct.balance, acct.available, acct.debits_pending) == (100, 100, 0)


async def test_resolves_exactly_once(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 10)
    await L.post(p.id, 5)
    assert await codes(L.post(p.id)) == "pending_transfer_already_posted"
    assert await codes(L.void(p.id)) == "pending_transfer_already_posted"
    q = await L.reserve(a, "sys_revenue", 10)
    await L.void(q.id)
    assert await codes(L.void(q.id)) == "pending_transfer_already_voided"
    assert await codes(L.post(q.id)) == "pending_transfer_already_voided"
    assert (await L.get_account(a)).balance == 95


async def test_concurrent_resolutions_of_one_pending_only_one_wins(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 10)
    results = await asyncio.gather(
        *[L.post(p.id) for _ in range(5)], *[L.void(p.id) for _ in range(5)], return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    acct = await L.get_account(a)
    assert acct.debits_pending == 0 and acct.balance in (90, 100)


async def test_bad_input_is_refused_and_changes_nothing(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    before = await L.accounts()
    assert await codes(L.transfer("nope", a, 1)) == "account_not_found"
    assert await codes(L.transfer(a, "nope", 1)) == "account_not_found"
    for bad in (0, -5, 1.5, "10", True, None):
        assert await codes(L.transfer(a, "sys_revenue", bad)) == "invalid_amount"  # type: ignore[arg-type]
    assert await codes(L.transfer(a, a, 1)) == "accounts_must_differ"
    assert await codes(L.transfer(a, "sys_revenue", 101)) == "insufficient_funds"
    assert await codes(L.reserve(a, "sys_revenue", 101)) == "insufficient_funds"
    assert await codes(L.post("tr_missing")) == "transfer_not_found"
    assert await codes(L.void("tr_missing")) == "transfer_not_found"
    single = await L.transfer(a, "sys_revenue", 1)
    assert await codes(L.post(single.id)) == "transfer_not_pending"
    p = await L.reserve(a, "sys_revenue", 10)
    assert await codes(L.post(p.id, 11)) == "amount_exceeds_pending"
    assert await codes(L.post(p.id, 0)) == "invalid_amount"
    assert await codes(L.transfer(a, "sys_revenue", 1, timeout_s=5)) == "invalid_timeout"
    assert await codes(L.reserve(a, "sys_revenue", 1, timeout_s=0)) == "invalid_timeout"
    assert await codes(L.transfer(a, "sys_revenue", 1, idempotency_key="")) == "invalid_idempotency_key"
    after = {x.id: x for x in await L.accounts()}
    for acct in before:
        moved = after[acct.id]
        if acct.id == a:
            assert (moved.balance, moved.debits_pending) == (acct.balance - 1, 10)
        elif acct.id == "sys_revenue":
            assert moved.balance == acct.balance + 1
        else:
            assert moved == acct


async def test_bound_holds_with_pending_counted(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    await L.reserve(a, "sys_revenue", 70)
    assert await codes(L.transfer(a, "sys_revenue", 31)) == "insufficient_funds"
    await L.transfer(a, "sys_revenue", 30)
    assert (await L.get_account(a)).available == 0


async def test_credits_must_not_exceed_debits(rt: Runtime) -> None:
    L = rt.ledger
    liability = await L.create_account("settlement", name="owed", flags=2)
    assert await codes(L.transfer("sys_funding", liability.id, 1)) == "exceeds_debits"
    await L.transfer(liability.id, "sys_revenue", 5)
    await L.transfer("sys_funding", liability.id, 5)
    assert await codes(L.transfer("sys_funding", liability.id, 1)) == "exceeds_debits"


async def test_unknown_account_kind(rt: Runtime) -> None:
    assert await codes(rt.ledger.create_account("piggybank")) == "invalid_account_kind"
    await rt.ledger.create_account("wallet", id="w1")
    assert await codes(rt.ledger.create_account("wallet", id="w1")) == "account_exists"


async def test_idempotency_same_body_returns_first_result(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    t1 = await L.transfer(a, "sys_revenue", 10, idempotency_key="k")
    t2 = await L.transfer(a, "sys_revenue", 10, idempotency_key="k")
    assert t1 == t2
    assert (await L.get_account(a)).balance == 90
    assert await codes(L.transfer(a, "sys_revenue", 11, idempotency_key="k")) == "idempotency_key_reused"
    assert (await L.get_account(a)).balance == 90


async def test_idempotency_within_one_batch(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    rs = await asyncio.gather(
        *[L.transfer(a, "sys_revenue", 10, idempotency_key="same") for _ in range(20)],
        L.transfer(a, "sys_revenue", 99, idempotency_key="same"),
        return_exceptions=True,
    )
    ok = [r for r in rs if not isinstance(r, Exception)]
    assert len({r.id for r in ok}) == 1 and len(ok) == 20  # type: ignore[union-attr]
    assert isinstance(rs[-1], TollwayError) and rs[-1].code == "idempotency_key_reused"
    assert (await L.get_account(a)).balance == 90


async def test_idempotent_post_and_void(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 10)
    x = await L.post(p.id, 4, idempotency_key="post-1")
    y = await L.post(p.id, 4, idempotency_key="post-1")
    assert x == y
    assert await codes(L.post(p.id, 5, idempotency_key="post-1")) == "idempotency_key_reused"
    assert (await L.get_account(a)).balance == 96


async def test_one_bad_request_does_not_sink_its_batch(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 50)
    rs = await asyncio.gather(*[L.transfer(a, "sys_revenue", 10) for _ in range(8)], return_exceptions=True)
    assert sum(1 for r in rs if not isinstance(r, Exception)) == 5
    assert all(r.code == "insufficient_funds" for r in rs if isinstance(r, TollwayError))
    assert (await L.get_account(a)).balance == 0


async def test_concurrent_reservations_never_overspend(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 1_000)
    rs = await asyncio.gather(*[L.reserve(a, "sys_revenue", 7) for _ in range(300)], return_exceptions=True)
    assert sum(1 for r in rs if not isinstance(r, Exception)) == 1_000 // 7
    acct = await L.get_account(a)
    assert acct.debits_pending == (1_000 // 7) * 7 and acct.available == 1_000 % 7


async def test_expiry_voids_after_timeout(settings: object) -> None:
    clock = ManualClock()
    rt = Runtime.build(settings, clock=clock)  # type: ignore[arg-type]
    try:
        L = rt.ledger
        a = await funded(L, 100)
        p = await L.reserve(a, "sys_revenue", 40, timeout_s=10)
        assert await L.expire_due() == 0
        clock.advance(seconds=10)
        assert await L.expire_due() == 1
        assert await L.expire_due() == 0
        acct = await L.get_account(a)
        assert (acct.available, acct.debits_pending) == (100, 0)
        assert await codes(L.post(p.id)) == "pending_transfer_expired"
        hist = await L.history(a)
        assert [t.kind for t in hist][:2] == ["expired", "pending"]
    finally:
        await rt.close()


async def test_late_post_loses_to_the_timeout(settings: object) -> None:
    clock = ManualClock()
    rt = Runtime.build(settings, clock=clock)  # type: ignore[arg-type]
    try:
        L = rt.ledger
        a = await funded(L, 100)
        p = await L.reserve(a, "sys_revenue", 40, timeout_s=5)
        clock.advance(seconds=6)
        assert await codes(L.post(p.id)) == "pending_transfer_expired"
        assert (await L.get_account(a)).available == 100
        assert await L.expire_due() == 0
    finally:
        await rt.close()


async def test_usage_event_is_written_with_the_post(rt: Runtime) -> None:
    from sqlalchemy import select

    from tollway.core.schema import usage_events

    L = rt.ledger
    a = await funded(L, 100)
    p = await L.reserve(a, "sys_revenue", 50)
    t = await L.post(p.id, 30, usage=Usage("tokens", 123, "cus_1", {"model": "m"}))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(usage_events))).mappings().all()
    assert len(rows) == 1
    r = rows[0]
    assert (r["transfer_id"], r["meter"], r["quantity"], r["amount"], r["customer_id"]) == (
        t.id,
        "tokens",
        123,
        30,
        "cus_1",
    )


async def test_history_newest_first_and_paginates(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    ts = [await L.transfer(a, "sys_revenue", i + 1) for i in range(5)]
    h = await L.history(a, limit=3)
    assert [t.id for t in h] == [t.id for t in reversed(ts)][:3]
    h2 = await L.history(a, limit=10, before=h[-1].id)
    assert [t.id for t in h2][:2] == [ts[1].id, ts[0].id]
    assert await codes(L.history("nope")) == "account_not_found"


async def test_reserve_early_is_decided_before_its_commit(rt: Runtime) -> None:
    """The decision comes back while the commit may still run; the commit's
    future then holds the same transfer, and the money is held."""
    ledger = rt.ledger
    acct = await funded(ledger)
    t, committed = await reserve_early(ledger, acct, "sys_revenue", 300)
    assert await committed == t
    a = await ledger.get_account(acct)
    assert (a.balance, a.debits_pending) == (1_000, 300)


async def test_reserve_early_refusal_waits_for_the_commit(rt: Runtime) -> None:
    ledger = rt.ledger
    acct = await funded(ledger, 100)
    assert await codes(reserve_early(ledger, acct, "sys_revenue", 300)) == "insufficient_funds"
    assert (await ledger.get_account(acct)).debits_pending == 0


async def test_reserve_early_commit_failure_reaches_the_commit_future(rt: Runtime) -> None:
    """A batch that was decided and then failed to commit: the early caller has
    its transfer, and the commit future says what really happened."""
    ledger = rt.ledger
    acct = await funded(ledger)
    real = ledger._apply

    async def decide_then_fail(
        ops: list[object], decided: object, riders: object = (), *, lazy: bool = False
    ) -> object:
        async def no_commit(*a: object) -> object:
            raise RuntimeError("disk gone")

        if decided is not None:
            # Apply for real to get a decision, then report a lost commit.
            results = await real(ops, None)  # type: ignore[arg-type]
            decided(results)  # type: ignore[operator]
        return await no_commit()

    ledger._apply = decide_then_fail  # type: ignore[assignment,method-assign]
    try:
        t, committed = await reserve_early(ledger, acct, "sys_revenue", 300)
        r = await committed
        assert isinstance(r, TollwayError) and r.code == "database_unavailable"
        assert t.amount == 300
    finally:
        ledger._apply = real  # type: ignore[method-assign]


async def test_lingering_op_rides_with_the_next_batch_or_commits_alone(rt: Runtime) -> None:
    ledger = rt.ledger
    acct = await funded(ledger)
    ledger.linger_s = 60.0  # nothing but another op can carry it
    t = await ledger.reserve(acct, "sys_revenue", 300)
    lingering = asyncio.ensure_future(ledger.post(t.id, 100, linger=True))
    await asyncio.sleep(0.05)
    assert not lingering.done()  # still waiting for company
    other = await ledger.reserve(acct, "sys_revenue", 50)  # commits both in one batch
    assert (await lingering).amount == 100 and other.amount == 50
    ledger.linger_s = 0.001
    await ledger.void(other.id, linger=True)  # alone: commits after the linger
    a = await ledger.get_account(acct)
    assert (a.balance, a.debits_pending) == (900, 0)


async def test_riders_commit_with_the_next_batch_and_never_fail_it(rt: Runtime) -> None:
    """Side rows ride inside a ledger batch's transaction; a bad rider is rolled
    back to its savepoint and dropped, and the batch still commits."""
    ledger = rt.ledger
    acct = await funded(ledger)
    if not ledger.ride(Statement("INSERT INTO customers (id) VALUES (?)"), [("no-such-columns-given",)]):
        pytest.skip("riders exist only on a SQLite file database")
    ledger.ride(Statement("UPDATE customers SET name = ? WHERE id = ?"), [("x", "none")])
    ledger.ride(Statement("INSERT INTO nowhere VALUES (?)"), [(1,)])  # fails: rolled back, dropped
    t = await ledger.reserve(acct, "sys_revenue", 10)
    await ledger.riders_committed()
    assert t.amount == 10 and (await ledger.get_account(acct)).debits_pending == 10
    ledger.ride(Statement("UPDATE customers SET name = ? WHERE id = ?"), [("y", "none")])
    await ledger.riders_committed()  # alone, with no batch to ride: still written


async def test_a_job_sent_to_the_writer_as_a_decision_lands_waits_for_that_batchs_commit(
    rt: Runtime,
) -> None:
    """A caller woken by an inline decision runs before that batch's commit is
    handed to the writer thread; whatever it sends to the writer (here the
    request log's prune) must still queue behind that commit, not start a
    transaction inside the open one."""
    ledger = rt.ledger
    acct = await funded(ledger, 100_000)

    async def decided_then_write_aside() -> int | None:
        await reserve_early(ledger, acct, "sys_revenue", 1)
        return await ledger.write_aside(Statement("DELETE FROM request_log WHERE created_at_us < ?"), [(0,)])

    for _ in range(20):
        await asyncio.gather(*(decided_then_write_aside() for _ in range(3)))
    a = await ledger.get_account(acct)
    assert (a.balance, a.debits_pending) == (100_000, 60)
