"""Linked chains (TigerBeetle's ``linked`` flag): a chain of transfers commits
or fails as one, the failing transfer named, on every backend. Then the same
under hypothesis: random chains under random failures are all or nothing, and
the ledger stays zero-sum."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from sqlalchemy import func, select

from conftest import settings_for
from tollway.charge import Payer
from tollway.charge.hold import Cap, Source
from tollway.core.errors import TollwayError
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.ledger import Ledger, Transfer
from tollway.ledger.apply import BatchState, apply_batch
from tollway.ledger.ops import CreateTransfer, Op, ResolvePending
from tollway.runtime import Runtime

R = TypeVar("R")


async def funded(ledger: Ledger, amount: int, kind: str = "customer") -> str:
    acct = await ledger.create_account(kind)
    if amount:
        await ledger.transfer("sys_funding", acct.id, amount)
    return acct.id


def codes(results: Sequence[Any]) -> list[str]:
    return [r.code if isinstance(r, TollwayError) else "ok" for r in results]


async def test_a_chain_commits_whole(rt: Runtime) -> None:
    L = rt.ledger
    a, b = await funded(L, 100), await funded(L, 0)
    rs = await L.chain([CreateTransfer(a, b, 60), CreateTransfer(b, "sys_revenue", 50, pending=True)])
    assert codes(rs) == ["ok", "ok"]
    assert (await L.get_account(a)).balance == 40
    bb = await L.get_account(b)
    assert (bb.balance, bb.debits_pending) == (60, 50)


async def test_a_failing_transfer_is_named_and_nothing_of_the_chain_applies(rt: Runtime) -> None:
    L = rt.ledger
    a, b = await funded(L, 100), await funded(L, 10)
    before = {x: await L.get_account(x) for x in (a, b)}
    rs = await L.chain(
        [
            CreateTransfer(a, "sys_revenue", 60, pending=True, idempotency_key="c1"),
            CreateTransfer(b, "sys_revenue", 50),  # overdraft
            CreateTransfer(a, b, 1),
        ]
    )
    assert codes(rs) == ["linked_event_failed", "insufficient_funds", "linked_event_failed"]
    assert isinstance(rs[0], TollwayError) and "transfer 1 " in rs[0].message
    assert {x: await L.get_account(x) for x in (a, b)} == before
    # The key was not used: the chain's first transfer can be made on its own.
    t = await L.reserve(a, "sys_revenue", 60, idempotency_key="c1")
    assert t.amount == 60


async def test_a_refused_chain_leaves_its_batch_neighbours_alone(rt: Runtime) -> None:
    L = rt.ledger
    a = await funded(L, 100)
    chain = L.chain([CreateTransfer(a, "sys_revenue", 10), CreateTransfer("nope", "sys_revenue", 1)])
    rs, alone = await asyncio.gather(chain, L.transfer(a, "sys_revenue", 5))
    assert codes(rs) == ["linked_event_failed", "account_not_found"]
    assert alone.amount == 5 and (await L.get_account(a)).balance == 95


async def test_a_chain_is_never_split_between_batches(settings: Any) -> None:
    rt = Runtime.build(settings_for(settings.database.url, ledger={"batch_max": 1}))
    try:
        L = rt.ledger
        a = await funded(L, 100)
        ops: list[Op] = [CreateTransfer(a, "sys_revenue", 10) for _ in range(4)]
        rs, *_ = await asyncio.gather(
            L.chain([*ops, CreateTransfer(a, "sys_revenue", 1_000)]),
            *(L.transfer(a, "sys_revenue", 1) for _ in range(3)),
        )
        assert codes(rs) == ["linked_event_failed"] * 4 + ["insufficient_funds"]
        assert (await L.get_account(a)).balance == 97
    finally:
        await rt.close()


async def test_split_legs_divide_the_amount_under_the_write_lock(rt: Runtime) -> None:
    L = rt.ledger
    free, prepaid = await funded(L, 100), await funded(L, 1_000)

    def legs(amount: int) -> list[Op]:
        return [
            CreateTransfer(free, "sys_fees", amount, pending=True, split=True),
            CreateTransfer(prepaid, "sys_revenue", amount, pending=True, split=True),
        ]

    rs = await L.chain(legs(300))
    assert [r.amount for r in rs if isinstance(r, Transfer)] == [100, 200]
    rs = await L.chain(legs(50))  # the free account is drawn down: its leg takes nothing
    assert [(bool(r.id), r.amount) for r in rs if isinstance(r, Transfer)] == [(False, 0), (True, 50)]
    rs = await L.chain(legs(5_000))
    assert codes(rs) == ["linked_event_failed", "insufficient_funds"]
    assert isinstance(rs[1], TollwayError) and "750 micro-USD available, 5000 needed" in rs[1].message
    f, p = await L.get_account(free), await L.get_account(prepaid)
    assert (f.debits_pending, p.debits_pending) == (100, 250)


async def test_a_cap_refusal_reserves_nothing_and_voids_nothing(rt: Runtime) -> None:
    """The hold's legs are one chain: a refused cap leaves no leg to void."""
    L = rt.ledger
    c = await rt.customers.create("Ada")
    await L.transfer("sys_funding", c.account_id, 1_000)
    budget = await funded(L, 50, "budget")
    p = Payer(c.account_id, c.id, (Source(c.account_id),), (Cap(budget, "key daily budget"),))
    with pytest.raises(TollwayError) as e:
        await rt.charger.hold(p, 100, meter="t").reserve(early=True)
    assert e.value.code == "budget_exceeded"
    async with rt.engine.connect() as conn:
        n = (await conn.execute(select(func.count()).where(T.c.debit_account_id == c.account_id))).scalar()
    assert n == 0 and (await L.get_account(c.account_id)).debits_pending == 0


def test_a_batch_that_ends_inside_a_chain_refuses_the_chain() -> None:
    st_ = BatchState(0, 300, {}, {}, {})
    ops: list[Op] = [CreateTransfer("a", "b", 1, linked=True), CreateTransfer("a", "b", 1, linked=True)]
    results, writes = apply_batch(ops, st_)
    assert codes(results) == ["linked_event_failed", "linked_event_chain_open"]
    assert writes.transfers == []


# ------------------------------------------------------------------ properties

N_ACCOUNTS = 4


@st.composite
def chains(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A chain as plain data: (kind, args) per transfer, resolved against the
    example's accounts and open/resolved pendings when it runs."""
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(
                ["create", "create", "pending", "split", "post", "void", "post_done", "missing", "same"]
            )
        )
        steps.append(
            (
                kind,
                (
                    draw(st.integers(0, N_ACCOUNTS - 1)),
                    draw(st.integers(0, N_ACCOUNTS - 1)),
                    draw(st.integers(1, 400)),
                    draw(st.sampled_from([None, None, "k0", "k1", "k2"])),
                ),
            )
        )
    return steps


class Harness:
    """One runtime on its own event loop; every example works on fresh accounts."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.rt = Runtime.build(settings_for(url))
        self.n = itertools.count()

    def run(self, aw: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(aw)

    async def example(self, chain: list[tuple[str, Any]]) -> None:
        L = self.rt.ledger
        i = next(self.n)
        accts = [await funded(L, 500) for _ in range(N_ACCOUNTS)]
        open_p = [await L.reserve(a, "sys_revenue", 50) for a in accts[:2]]
        done_p = await L.reserve(accts[2], "sys_revenue", 50)
        await L.void(done_p.id)
        ops: list[Op] = []
        for kind, (d, c, amount, key) in chain:
            key = f"ex{i}-{key}" if key else None
            if kind in ("create", "pending", "split"):
                ops.append(
                    CreateTransfer(
                        accts[d],
                        accts[c] if c != d else "sys_revenue",
                        amount,
                        pending=kind != "create",
                        split=kind == "split",
                        idempotency_key=key,
                    )
                )
            elif kind in ("post", "void"):
                ops.append(ResolvePending(open_p[d % 2].id, kind == "post", idempotency_key=key))
            elif kind == "post_done":
                ops.append(ResolvePending(done_p.id, True, idempotency_key=key))
            elif kind == "missing":
                ops.append(CreateTransfer(f"nope-{i}", accts[c], amount, idempotency_key=key))
            else:
                ops.append(CreateTransfer(accts[d], accts[d], amount, idempotency_key=key))
        by = await funded(L, 10)
        before = await L.accounts([*accts, "sys_revenue"])
        rows_before = await self.count(T)
        bystander = L.transfer(by, "sys_funding", 1)  # shares the chain's batch
        results, _ = await asyncio.gather(L.chain(ops), bystander)
        after = {a.id: a for a in await L.accounts([*accts, "sys_revenue"])}
        failed = [k for k, r in enumerate(results) if isinstance(r, TollwayError)]
        if failed:
            own = [k for k in failed if results[k].code != "linked_event_failed"]  # type: ignore[union-attr]
            assert len(failed) == len(ops) and len(own) == 1, codes(results)
            for k, r in enumerate(results):
                if k != own[0]:
                    assert f"transfer {own[0]} " in r.message  # type: ignore[union-attr]
            for a in before:  # nothing of the chain moved
                b = after[a.id]
                assert (b.debits_posted, b.debits_pending, b.credits_posted, b.credits_pending) == (
                    a.debits_posted,
                    a.debits_pending,
                    a.credits_posted,
                    a.credits_pending,
                )
            assert await self.count(T) == rows_before + 1  # the bystander's transfer alone
            open_now = await self.open_pendings()
            assert {p.id for p in open_p} <= open_now
        else:
            made = {r.id for r in results if isinstance(r, Transfer) and r.id}
            assert await self.count(T) <= rows_before + 1 + len(made)
        totals = await L.accounts()
        assert sum(a.credits_posted - a.debits_posted for a in totals) == 0
        assert sum(a.credits_pending - a.debits_pending for a in totals) == 0
        for a in totals:
            if a.debits_must_not_exceed_credits:
                assert a.debits_posted + a.debits_pending <= a.credits_posted

    async def count(self, table: Any) -> int:
        async with self.rt.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)

    async def open_pendings(self) -> set[str]:
        async with self.rt.engine.connect() as conn:
            return set((await conn.execute(select(P.c.transfer_id))).scalars())

    def close(self) -> None:
        try:
            self.run(self.rt.close())
        finally:
            self.loop.close()


def test_random_chains_under_random_failures_are_all_or_nothing(db_url: str) -> None:
    h = Harness(db_url)
    try:

        @hypothesis.settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @hypothesis.given(chains())
        def check(chain: list[tuple[str, Any]]) -> None:
            h.run(h.example(chain))

        check()
    finally:
        h.close()
