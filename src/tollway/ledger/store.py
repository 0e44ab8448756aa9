"""SQL for one ledger batch: load (and lock) what it touches, write back what changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from tollway.core.schema import ledger_accounts as A
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import usage_events as U
from tollway.ledger.apply import AccountState, BatchState, BatchWrites, PendingState
from tollway.ledger.ops import CreateTransfer, Op
from tollway.ledger.types import Account, Transfer, kind_of

_UPDATE_ACCOUNT = (
    update(A)
    .where(A.c.id == bindparam("_id"))
    .values(
        debits_pending=bindparam("_dp"),
        debits_posted=bindparam("_dpo"),
        credits_pending=bindparam("_cp"),
        credits_posted=bindparam("_cpo"),
    )
)


def transfer_from_row(r: Row[Any] | Sequence[Any]) -> Transfer:
    m = r._mapping if isinstance(r, Row) else None
    if m is not None:
        return Transfer(
            m["id"],
            m["debit_account_id"],
            m["credit_account_id"],
            m["amount"],
            m["flags"],
            m["pending_id"],
            m["expires_at_us"],
            m["idempotency_key"],
            m["description"],
            m["created_at_us"],
        )
    raise TypeError("expected a row")


def account_from_row(r: Row[Any] | Sequence[Any]) -> Account:
    return Account(*(r[i] for i in range(10)))


ACCOUNT_COLUMNS = (
    A.c.id,
    A.c.kind,
    A.c.flags,
    A.c.debits_pending,
    A.c.debits_posted,
    A.c.credits_pending,
    A.c.credits_posted,
    A.c.customer_id,
    A.c.name,
    A.c.created_at_us,
)


async def load_batch(
    conn: AsyncConnection, ops: list[Op], now_us: int, default_timeout_s: int, lock: bool
) -> BatchState:
    keys = [op.idempotency_key for op in ops if op.idempotency_key is not None]
    seen: dict[str, tuple[str | None, Transfer]] = {}
    if keys:
        rows = await conn.execute(select(T).where(T.c.idempotency_key.in_(keys)))
        for r in rows:
            t = transfer_from_row(r)
            seen[r.idempotency_key] = (r.request_hash, t)

    pending_ids = sorted({op.pending_id for op in ops if not isinstance(op, CreateTransfer)})
    pendings: dict[str, PendingState] = {}
    if pending_ids:
        q = select(P.c.transfer_id).where(P.c.transfer_id.in_(pending_ids)).order_by(P.c.transfer_id)
        open_ids = set((await conn.execute(q.with_for_update() if lock else q)).scalars())
        for r in await conn.execute(select(T).where(T.c.id.in_(pending_ids))):
            pendings[r.id] = PendingState(transfer_from_row(r), open=r.id in open_ids)
        closed = [i for i, ps in pendings.items() if not ps.open]
        if closed:
            q2 = select(T.c.pending_id, T.c.flags).where(T.c.pending_id.in_(closed))
            for pid, flags in await conn.execute(q2):
                pendings[pid].resolved_as = kind_of(flags).value

    account_ids: set[str] = set()
    for op in ops:
        if isinstance(op, CreateTransfer):
            account_ids.add(op.debit_account_id)
            account_ids.add(op.credit_account_id)
    for ps in pendings.values():
        account_ids.add(ps.transfer.debit_account_id)
        account_ids.add(ps.transfer.credit_account_id)
    accounts: dict[str, AccountState] = {}
    if account_ids:
        q3 = (
            select(
                A.c.id,
                A.c.flags,
                A.c.debits_pending,
                A.c.debits_posted,
                A.c.credits_pending,
                A.c.credits_posted,
            )
            .where(A.c.id.in_(sorted(account_ids)))
            .order_by(A.c.id)
        )
        for r in await conn.execute(q3.with_for_update() if lock else q3):
            accounts[r[0]] = AccountState(r[1], r[2], r[3], r[4], r[5])
    return BatchState(now_us, default_timeout_s, accounts, pendings, seen)


async def write_batch(conn: AsyncConnection, st: BatchState, w: BatchWrites) -> None:
    if w.transfers:
        await conn.execute(insert(T), w.transfers)
    if w.new_pending:
        await conn.execute(insert(P), w.new_pending)
    if w.resolved_pending:
        await conn.execute(delete(P).where(P.c.transfer_id.in_(w.resolved_pending)))
    if w.dirty_accounts:
        params = []
        for aid in w.dirty_accounts:
            a = st.accounts[aid]
            params.append(
                {
                    "_id": aid,
                    "_dp": a.debits_pending,
                    "_dpo": a.debits_posted,
                    "_cp": a.credits_pending,
                    "_cpo": a.credits_posted,
                }
            )
        await conn.execute(_UPDATE_ACCOUNT, params)
    if w.usage:
        await conn.execute(insert(U), w.usage)


async def select_accounts(conn: AsyncConnection, ids: Iterable[str] | None) -> list[Account]:
    q = select(*ACCOUNT_COLUMNS).order_by(A.c.id)
    if ids is not None:
        q = q.where(A.c.id.in_(list(ids)))
    return [account_from_row(r) for r in await conn.execute(q)]
