"""The charge path on its own, with faults injected at every step."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from tollway.charge import Charger, Payer
from tollway.charge.hold import Source
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.core.schema import usage_events
from tollway.runtime import Runtime
from tollway.settings import Settings


async def payer(rt: Runtime, amount: int = 1_000) -> Payer:
    c = await rt.customers.create("Ada")
    if amount:
        await rt.ledger.transfer("sys_funding", c.account_id, amount)
    return Payer(c.account_id, c.id)


async def state(rt: Runtime, p: Payer) -> tuple[int, int, int]:
    a = await rt.ledger.get_account(p.account_id)
    rev = await rt.ledger.get_account("sys_revenue")
    return a.balance, a.debits_pending, rev.balance


async def usage_rows(rt: Runtime) -> list[dict[str, object]]:
    async with rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(usage_events))).mappings()]


async def test_post_actual_releases_the_rest_and_records_usage(rt: Runtime) -> None:
    p = await payer(rt)
    async with rt.charger.hold(p, 300, meter="tokens") as h:
        assert await state(rt, p) == (1_000, 300, 0)
        h.post(120, quantity=42, model="smollm2")
    assert await state(rt, p) == (880, 0, 120)
    assert h.receipt is not None and h.receipt.charged == 120
    assert h.receipt.headers()["x-tollway-charged"] == "120"
    [u] = await usage_rows(rt)
    assert (u["meter"], u["quantity"], u["amount"], u["customer_id"]) == ("tokens", 42, 120, p.customer_id)


async def test_exception_voids_and_propagates(rt: Runtime) -> None:
    p = await payer(rt)
    with pytest.raises(RuntimeError, match="model crashed"):
        async with rt.charger.hold(p, 300, meter="tokens") as h:
            h.post(100)
            raise RuntimeError("model crashed")
    assert await state(rt, p) == (1_000, 0, 0)
    assert await usage_rows(rt) == []


async def test_cancellation_voids(rt: Runtime) -> None:
    p = await payer(rt)
    entered = asyncio.Event()

    async def work() -> None:
        async with rt.charger.hold(p, 300, meter="tokens"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await state(rt, p) == (1_000, 0, 0)


async def test_insufficient_funds_refuses_before_work(rt: Runtime) -> None:
    p = await payer(rt, 100)
    ran = False
    with pytest.raises(TollwayError) as e:
        async with rt.charger.hold(p, 300, meter="tokens"):
            ran = True
    assert e.value.code == "insufficient_funds" and e.value.status == 402 and not ran
    assert await state(rt, p) == (100, 0, 0)


async def test_zero_or_no_post_charges_nothing_but_records_usage(rt: Runtime) -> None:
    p = await payer(rt)
    async with rt.charger.hold(p, 300, meter="cache") as h:
        h.post(0, quantity=1)
    async with rt.charger.hold(p, 300, meter="cache"):
        pass
    assert await state(rt, p) == (1_000, 0, 0)
    assert [u["amount"] for u in await usage_rows(rt)] == [0, 0]


async def test_post_more_than_reserved_is_refused_and_voids(rt: Runtime) -> None:
    p = await payer(rt)
    with pytest.raises(TollwayError) as e:
        async with rt.charger.hold(p, 300, meter="tokens") as h:
            h.post(301)
    assert e.value.code == "amount_exceeds_pending"
    assert await state(rt, p) == (1_000, 0, 0)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
async def test_bad_max_amount(rt: Runtime, bad: object) -> None:
    p = await payer(rt)
    with pytest.raises(TollwayError) as e:
        rt.charger.hold(p, bad, meter="x")  # type: ignore[arg-type]
    assert e.value.code == "invalid_amount"


async def test_retry_with_same_key_never_charges_twice(rt: Runtime) -> None:
    p = await payer(rt)
    for _ in range(3):
        async with rt.charger.hold(p, 300, meter="tokens", idempotency_key="req-1") as h:
            h.post(100)
    assert await state(rt, p) == (900, 0, 100)


async def test_crash_between_reserve_and_post_expires(settings: Settings) -> None:
    """If the process dies mid-request, the hold is released by its timeout."""
    clock = ManualClock()
    rt = Runtime.build(settings, clock=clock)
    try:
        p = await payer(rt)
        charger = Charger(rt.ledger, timeout_s=30)
        hold = charger.hold(p, 300, meter="tokens")
        await hold.__aenter__()  # reserved; then the process "dies": no exit runs
        assert await state(rt, p) == (1_000, 300, 0)
        clock.advance(seconds=30)
        assert await rt.ledger.expire_due() == 1
        assert await state(rt, p) == (1_000, 0, 0)
    finally:
        await rt.close()


async def test_post_failure_surfaces_and_hold_expires(settings: Settings) -> None:
    """A ledger failure at post time is raised to the caller, never swallowed;
    the reservation is then released by its timeout."""
    clock = ManualClock()
    rt = Runtime.build(settings, clock=clock)
    try:
        p = await payer(rt)

        def broken_queue(*a: object, **k: object) -> object:  # how a settle's legs reach the ledger
            raise TollwayError("api_error", "database_unavailable", "injected", status=503)

        with pytest.raises(TollwayError, match="injected"):
            async with rt.charger.hold(p, 300, meter="tokens", timeout_s=5) as h:
                h.post(100)
                rt.ledger.queue = broken_queue  # type: ignore[method-assign,assignment]
        assert await state(rt, p) == (1_000, 300, 0)
        clock.advance(seconds=5)
        await rt.ledger.expire_due()
        assert await state(rt, p) == (1_000, 0, 0)
    finally:
        await rt.close()


async def test_many_concurrent_holds_never_overspend(rt: Runtime) -> None:
    p = await payer(rt, 1_000)

    async def one() -> int:
        async with rt.charger.hold(p, 100, meter="tokens") as h:
            await asyncio.sleep(0)
            h.post(60)
        return 60

    rs = await asyncio.gather(*[one() for _ in range(40)], return_exceptions=True)
    charged = sum(r for r in rs if isinstance(r, int))
    bal, pending, rev = await state(rt, p)
    assert pending == 0 and bal == 1_000 - charged and rev == charged and bal >= 0


async def two_sources(rt: Runtime, free: int, prepaid: int) -> Payer:
    from tollway.charge import Source

    c = await rt.customers.create("Grace")
    allowance = await rt.ledger.create_account("free_allowance", customer_id=c.id)
    if free:
        await rt.ledger.transfer("sys_funding", allowance.id, free)
    if prepaid:
        await rt.ledger.transfer("sys_funding", c.account_id, prepaid)
    return Payer(
        c.account_id,
        c.id,
        sources=(Source(allowance.id, payee="sys_fees"), Source(c.account_id)),
    )


async def test_sources_are_drawn_in_order(rt: Runtime) -> None:
    p = await two_sources(rt, free=100, prepaid=1_000)
    free_id = p.sources[0].account_id
    async with rt.charger.hold(p, 300, meter="neurons") as h:
        assert [leg.pending.amount for leg in h.legs] == [100, 200]
        h.post(150, quantity=7)
    free = await rt.ledger.get_account(free_id)
    prepaid = await rt.ledger.get_account(p.account_id)
    assert (free.balance, free.debits_pending) == (0, 0)
    assert (prepaid.balance, prepaid.debits_pending) == (950, 0)
    assert (await rt.ledger.get_account("sys_fees")).balance == 100
    assert (await rt.ledger.get_account("sys_revenue")).balance == 50
    [u] = await usage_rows(rt)
    assert (u["amount"], u["quantity"]) == (150, 7)


async def test_a_settle_and_a_release_of_two_legs_make_one_task_each(rt: Runtime) -> None:
    """The legs are queued on the ledger together and awaited in turn: the only
    task a settle (or a release) makes is its own, the one that finishes it if
    its caller goes away. Not one per leg, nor a gather."""
    p = await two_sources(rt, free=100, prepaid=1_000)
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(lp: asyncio.AbstractEventLoop, coro: object, **kw: object) -> asyncio.Task[object]:
        code = getattr(coro, "cr_code", None)
        if code is not None and (
            "/tollway/charge/" in code.co_filename or "/tollway/ledger/" in code.co_filename
        ):
            made.append(coro.__qualname__)  # type: ignore[attr-defined]  # not the database driver's own
        return asyncio.Task(coro, loop=lp, **kw)  # type: ignore[arg-type]

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        async with rt.charger.hold(p, 300, meter="neurons") as h:
            assert len(h.legs) == 2
            h.post(50)  # from the free allowance: 50 of it stays for the next hold's first leg
        settled, made[:] = list(made), []
        with pytest.raises(RuntimeError):
            async with rt.charger.hold(p, 300, meter="neurons") as h:
                assert len(h.legs) == 2
                raise RuntimeError("the work failed")
        released = list(made)
    finally:
        loop.set_task_factory(None)
    assert settled == ["Hold._settle"]
    assert released == ["Hold._release"]
    assert (await rt.ledger.get_account(p.account_id)).debits_pending == 0


async def test_small_charge_only_touches_the_first_source(rt: Runtime) -> None:
    p = await two_sources(rt, free=100, prepaid=1_000)
    async with rt.charger.hold(p, 80, meter="neurons") as h:
        assert len(h.legs) == 1
        h.post(30)
    assert (await rt.ledger.get_account(p.sources[0].account_id)).balance == 70
    assert (await rt.ledger.get_account(p.account_id)).balance == 1_000


async def test_sources_together_too_small_refuse_and_reserve_nothing(rt: Runtime) -> None:
    p = await two_sources(rt, free=100, prepaid=150)
    with pytest.raises(TollwayError) as e:
        async with rt.charger.hold(p, 300, meter="neurons"):
            pytest.fail("work must not run")
    assert e.value.code == "insufficient_funds"
    for s in p.sources:
        a = await rt.ledger.get_account(s.account_id)
        assert a.debits_pending == 0


async def test_settle_charges_partial_work_explicitly(rt: Runtime) -> None:
    """A stream cut short: the caller settles what was produced, not the max."""
    p = await two_sources(rt, free=100, prepaid=1_000)
    hold = rt.charger.hold(p, 500, meter="neurons")
    await hold.reserve()
    receipt = await hold.settle(120, quantity=3, disconnected=True)
    assert receipt.charged == 120
    assert await hold.settle(120) is receipt  # settling twice is a no-op
    assert (await rt.ledger.get_account(p.account_id)).balance == 980


async def test_settle_completes_once_even_if_its_caller_is_cancelled(rt: Runtime) -> None:
    acct = (await rt.customers.create("Cy")).account_id
    await rt.ledger.transfer("sys_funding", acct, 1_000)
    hold = rt.charger.hold(Payer(acct), 300, meter="t")
    await hold.reserve()
    task = asyncio.ensure_future(hold.settle(120))
    await asyncio.sleep(0)  # the settle is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    receipt = await hold.settle(120)  # waits for the first settle, does not run again
    assert receipt.charged == 120
    await hold.release()  # a no-op once settled
    a = await rt.ledger.get_account(acct)
    assert (a.balance, a.debits_pending) == (880, 0)


async def test_early_reservation_that_fails_to_commit_holds_and_charges_nothing(rt: Runtime) -> None:
    """reserve(early=True) returns on the ledger's decision. If its chain then
    fails to commit, confirm() raises: nothing is held, and a later settle or
    release changes nothing."""
    c = await rt.customers.create("Ada")
    await rt.ledger.transfer("sys_funding", c.account_id, 1_000)
    free = await rt.ledger.create_account("customer", name="free")
    await rt.ledger.transfer("sys_funding", free.id, 100)
    p = Payer(c.account_id, c.id, (Source(free.id), Source(c.account_id)))
    real = rt.ledger.queue_chain
    background: list[asyncio.Future[None]] = []

    def chain_lost(ops: list[object], **k: object) -> object:
        queued = real(ops, **k)  # type: ignore[arg-type]
        lost = [asyncio.get_running_loop().create_future() for _ in queued]

        async def fail() -> None:  # decided, but its commit "failed": undo what did commit
            for _, committed in queued:
                t = await committed
                assert not isinstance(t, TollwayError)
                if t.id:
                    await rt.ledger.void(t.id)
            for f in lost:
                f.set_result(TollwayError("api_error", "database_unavailable", "lost", status=503))

        background.append(asyncio.ensure_future(fail()))
        return [(decision, f) for (decision, _), f in zip(queued, lost, strict=True)]

    rt.ledger.queue_chain = chain_lost  # type: ignore[method-assign,assignment]
    h = rt.charger.hold(p, 300, meter="tokens")
    await h.reserve(early=True)
    assert [lg.pending.amount for lg in h.legs] == [100, 200]
    with pytest.raises(TollwayError) as e:
        await h.confirm()
    assert e.value.code == "database_unavailable"
    with pytest.raises(TollwayError):
        await h.settle(100)
    await h.release()
    for acct, expect in ((free.id, 100), (c.account_id, 1_000)):
        a = await rt.ledger.get_account(acct)
        assert (a.balance, a.debits_pending) == (expect, 0)
    assert (await rt.ledger.get_account("sys_revenue")).balance == 0


async def test_settle_soon_commits_after_it_returns(rt: Runtime) -> None:
    p = await payer(rt)
    h = rt.charger.hold(p, 300, meter="tokens")
    await h.reserve(early=True)
    await h.confirm()
    done = h.settle_soon(120, quantity=1)
    assert await h.wait() is done.result()
    assert await state(rt, p) == (880, 0, 120)


async def test_a_contended_first_source_never_refuses_a_payer_who_can_pay(rt: Runtime) -> None:
    """Many requests at once drain a small free allowance while the prepaid
    balance is ample: each is served (from either source), none overdraws."""
    c = await rt.customers.create("Ada")
    await rt.ledger.transfer("sys_funding", c.account_id, 1_000_000)
    free = await rt.ledger.create_account("customer", name="free")
    await rt.ledger.transfer("sys_funding", free.id, 1000)
    p = Payer(c.account_id, c.id, (Source(free.id), Source(c.account_id)))

    async def one() -> None:
        h = rt.charger.hold(p, 30, meter="tokens")
        await h.reserve(early=True)
        h.settle_soon(7, quantity=1)
        await h.wait()

    async def wave() -> None:  # requests arriving over time, as under load
        for _ in range(30):
            await one()

    await asyncio.gather(*(wave() for _ in range(40)))
    f, a = await rt.ledger.get_account(free.id), await rt.ledger.get_account(c.account_id)
    assert f.balance >= 0 and f.debits_pending == a.debits_pending == 0
    assert (1000 - f.balance) + (1_000_000 - a.balance) == 40 * 30 * 7
