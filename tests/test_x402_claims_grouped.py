"""Claims grouped (the edge's paid path, made cheaper): on SQLite the claims of
requests that arrive together are written in one transaction of the ledger's
writer, in the order they came, and a lazy write runs on the event loop while
the writer thread is idle. The guarantees are the same as one claim at a time:
one holder per authorization, a payer's claims within its balance, each
caller its own outcome when a group fails."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from tollway.core.storage import sqlite_path
from tollway.ledger import Ledger
from tollway.runtime import Runtime
from tollway.x402.claims import PAYMENT_IN_USE, Claims
from tollway.x402.wire import INSUFFICIENT_FUNDS, PaymentInvalid


def _sqlite(rt: Runtime) -> str:
    path = sqlite_path(rt.engine)
    if not path:
        pytest.skip("SQLite only: on PostgreSQL each claim is its own transaction")
    return path


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group the ledger writes aside."""
    groups: list[int] = []
    real = Ledger.write_aside_each

    async def each(self: Ledger, writes: Any, *, lazy: bool = False) -> list[int] | None:
        groups.append(len(writes))
        return await real(self, writes, lazy=lazy)

    monkeypatch.setattr(Ledger, "write_aside_each", each)
    return groups


async def _outcomes(claims: Claims, calls: list[tuple[str, str, int, int | None]]) -> list[str]:
    async def one(key: str, payer: str, amount: int, spendable: int | None) -> str:
        try:
            await claims.claim(key, payer, amount, spendable)
        except PaymentInvalid as e:
            return e.reason
        return "claimed"

    return list(await asyncio.gather(*(one(*c) for c in calls)))


async def test_claims_sent_together_are_one_write_with_one_holder_each(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sqlite(rt)
    groups = _spy(monkeypatch)
    claims = Claims(rt.engine, rt.ledger, rt.clock)
    calls = [(f"x402:t:0xa:{i % 4}", "0xPayer", 0, None) for i in range(12)]  # 4 payments, 3 times each
    out = await _outcomes(claims, calls)
    assert sum(groups) == 12 and len(groups) < 12  # grouped, every claim written
    for k in range(4):
        mine = [o for (key, *_), o in zip(calls, out, strict=True) if key.endswith(f":{k}")]
        assert sorted(mine) == ["claimed", PAYMENT_IN_USE, PAYMENT_IN_USE]


async def test_a_payers_claims_in_one_group_stay_within_its_balance(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten payments of 300 against a balance of 1,000, at once: the statements of
    one group run in order, each seeing the ones before it: three run."""
    _sqlite(rt)
    groups = _spy(monkeypatch)
    claims = Claims(rt.engine, rt.ledger, rt.clock)
    out = await _outcomes(claims, [(f"x402:t:0xb:{i}", "0xPayer", 300, 1000) for i in range(10)])
    assert max(groups) > 1
    assert out.count("claimed") == 3 and out.count(INSUFFICIENT_FUNDS) == 7


async def test_a_group_that_fails_gives_each_claim_its_own_outcome(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sqlite(rt)
    real = Ledger.write_aside_each

    async def failing(self: Ledger, writes: Any, *, lazy: bool = False) -> list[int] | None:
        if len(writes) > 1:
            raise sqlite3.OperationalError("disk I/O error")
        return await real(self, writes, lazy=lazy)

    monkeypatch.setattr(Ledger, "write_aside_each", failing)
    claims = Claims(rt.engine, rt.ledger, rt.clock)
    out = await _outcomes(claims, [("x402:t:0xc:same", "0xPayer", 0, None)] * 3)
    assert sorted(out) == ["claimed", PAYMENT_IN_USE, PAYMENT_IN_USE]


async def test_a_lazy_write_runs_on_the_loop_unless_another_process_holds_the_lock(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _sqlite(rt)
    claims = Claims(rt.engine, rt.ledger, rt.clock)
    threaded: list[int] = []
    real = Ledger._on_writer

    async def on_writer(self: Ledger, fn: Any, *args: Any) -> Any:
        threaded.append(1)
        if other.in_transaction:  # the claim waits on the writer thread: let the other process go
            asyncio.get_running_loop().call_soon(other.execute, "COMMIT")
        return await real(self, fn, *args)

    monkeypatch.setattr(Ledger, "_on_writer", on_writer)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await claims.claim("x402:t:0xd:1", "0xPayer")
        assert threaded == []  # the writer was idle: written here, no thread round trip
        other.execute("BEGIN IMMEDIATE")  # another process writes
        await claims.claim("x402:t:0xd:2", "0xPayer")
        assert threaded == [1] and not other.in_transaction  # it waited for the lock on the thread
        with pytest.raises(PaymentInvalid) as e:
            await claims.claim("x402:t:0xd:2", "0xPayer")
        assert e.value.reason == PAYMENT_IN_USE
    finally:
        other.close()
