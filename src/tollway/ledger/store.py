"""SQL for one ledger batch: load (and lock) what it touches, write back what changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from tollway.core.schema import PENDING
from tollway.core.schema import ledger_accounts as A
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import usage_events as U
from tollway.ledger.apply import AccountState, BatchState, BatchWrites, PendingState
from tollway.ledger.ops import COMPACT_JSON, CreateTransfer, Op
from tollway.ledger.rawsql import RawTx
from tollway.ledger.types import Account, Transfer, kind_of

TRANSFER_COLUMNS = [c.name for c in T.columns]
_TCOLS = ", ".join(TRANSFER_COLUMNS)
_HASH_AT = TRANSFER_COLUMNS.index("request_hash")
_KEY_AT = TRANSFER_COLUMNS.index("idempotency_key")
_PCOLS = "transfer_id, debit_account_id, credit_account_id, amount, description, expires_at_us"

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


def transfer_from_row(r: Sequence[Any]) -> Transfer:
    """A row of ``ledger_transfers`` in table column order."""
    return Transfer(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[9], r[10])


def account_from_row(r: Sequence[Any]) -> Account:
    return Account._make(r)


async def load_batch(tx: RawTx, ops: list[Op], now_us: int, default_timeout_s: int) -> BatchState:
    lock = "" if tx.sqlite else " FOR UPDATE"
    pending_ids = sorted({op.pending_id for op in ops if not isinstance(op, CreateTransfer)})
    pendings: dict[str, PendingState] = {}
    if pending_ids:
        # Open reservations: everything a resolution needs is in ledger_pending.
        cond, args = tx.in_clause("transfer_id", pending_ids)
        q = f"SELECT {_PCOLS} FROM ledger_pending WHERE {cond} ORDER BY transfer_id{lock}"
        for tid, dr, cr, amount, desc, exp in await tx.fetch(q, args):
            t = Transfer(tid, dr, cr, amount, PENDING, None, exp, None, desc, 0)
            pendings[tid] = PendingState(t, open=True)
        # The rest are unknown, not pending, or already resolved (the error paths).
        others = [i for i in pending_ids if i not in pendings]
        if others:
            cond, args = tx.in_clause("id", others)
            for r in await tx.fetch(f"SELECT {_TCOLS} FROM ledger_transfers WHERE {cond}", args):
                pendings[r[0]] = PendingState(transfer_from_row(r), open=False)
            cond, args = tx.in_clause("pending_id", others)
            q = f"SELECT pending_id, flags FROM ledger_transfers WHERE {cond}"
            for pid, flags in await tx.fetch(q, args):
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
        cond, args = tx.in_clause("id", sorted(account_ids))
        q = (
            "SELECT id, flags, debits_pending, debits_posted, credits_pending, credits_posted"
            f" FROM ledger_accounts WHERE {cond} ORDER BY id{lock}"
        )
        for r in await tx.fetch(q, args):
            accounts[r[0]] = AccountState(r[1], r[2], r[3], r[4], r[5])
    # Idempotency keys last, once the rows are locked: on PostgreSQL a batch of
    # another process that used the same key on the same rows has committed by
    # now, and this read (a new snapshot under READ COMMITTED) sees it. Read
    # first, the second process would find the pending already resolved (409)
    # instead of the replay.
    keys = [op.idempotency_key for op in ops if op.idempotency_key is not None]
    seen: dict[str, tuple[str | None, Transfer]] = {}
    if keys:
        cond, args = tx.in_clause("idempotency_key", keys)
        for r in await tx.fetch(f"SELECT {_TCOLS} FROM ledger_transfers WHERE {cond}", args):
            seen[r[_KEY_AT]] = (r[_HASH_AT], transfer_from_row(r))
    return BatchState(now_us, default_timeout_s, accounts, pendings, seen)


async def write_batch(tx: RawTx, st: BatchState, w: BatchWrites) -> None:
    if w.transfers:
        await tx.executemany(tx.insert_sql(T), w.transfers)
    if w.new_pending:
        await tx.executemany(tx.insert_sql(P), w.new_pending)
    if w.resolved_pending:
        cond, args = tx.in_clause("transfer_id", w.resolved_pending)
        await tx.execute(f"DELETE FROM ledger_pending WHERE {cond}", args)
    if w.dirty_accounts:
        p = tx.ph(5)
        sql = (
            f"UPDATE ledger_accounts SET debits_pending = {p[0]}, debits_posted = {p[1]},"
            f" credits_pending = {p[2]}, credits_posted = {p[3]} WHERE id = {p[4]}"
        )
        rows = []
        for aid in w.dirty_accounts:
            a = st.accounts[aid]
            rows.append((a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, aid))
        await tx.executemany(sql, rows)
    if w.usage:
        await tx.executemany(
            tx.insert_sql(U),
            [(*u[:7], metadata_json(u[7]), *u[8:]) for u in w.usage],
        )


def metadata_json(m: Any) -> str:
    """A usage event's metadata as stored: orjson (~10x faster than the json
    module for these small dicts), or the json module for what orjson refuses
    (integers past 64 bits, lone surrogates, keys that are not strings)."""
    try:
        return orjson.dumps(m).decode()
    except (TypeError, orjson.JSONEncodeError):
        return COMPACT_JSON.encode(m)


async def select_accounts(conn: AsyncConnection, ids: Iterable[str] | None) -> list[Account]:
    q = select(*ACCOUNT_COLUMNS).order_by(A.c.id)
    if ids is not None:
        q = q.where(A.c.id.in_(list(ids)))
    return [account_from_row(r) for r in await conn.execute(q)]
