"""Apply a batch of ledger requests to in-memory state: pure, no I/O.

The writer loads the rows a batch touches (locked), calls :func:`apply_batch`,
then writes back exactly what it returns in the same transaction.  Every check
here mirrors a database constraint, which stays in place as a second line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tollway.core.errors import TollwayError
from tollway.core.ids import new_id
from tollway.core.money import MAX_AMOUNT
from tollway.core.schema import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    EXPIRED,
    PENDING,
    POST_PENDING,
    VOID_PENDING,
)
from tollway.ledger import errors
from tollway.ledger.ops import CreateTransfer, Op, ResolvePending, Usage
from tollway.ledger.types import Transfer, kind_of


class AccountState:
    __slots__ = ("credits_pending", "credits_posted", "debits_pending", "debits_posted", "flags")

    def __init__(self, flags: int, dp: int, dpo: int, cp: int, cpo: int) -> None:
        self.flags = flags
        self.debits_pending = dp
        self.debits_posted = dpo
        self.credits_pending = cp
        self.credits_posted = cpo


@dataclass(slots=True)
class PendingState:
    transfer: Transfer
    open: bool
    resolved_as: str | None = None  # post_pending | void_pending | expired


@dataclass(slots=True)
class BatchState:
    now_us: int
    default_timeout_s: int
    accounts: dict[str, AccountState]
    pendings: dict[str, PendingState]
    # idempotency key -> (request hash, the transfer it produced)
    seen_keys: dict[str, tuple[str | None, Transfer]]


@dataclass(slots=True)
class BatchWrites:
    # Rows in table column order (see tollway.core.schema).
    transfers: list[tuple[Any, ...]] = field(default_factory=list)
    new_pending: list[tuple[str, str, str, int, str, int]] = field(default_factory=list)
    resolved_pending: list[str] = field(default_factory=list)
    dirty_accounts: set[str] = field(default_factory=set)
    usage: list[tuple[Any, ...]] = field(default_factory=list)


Result = Transfer | TollwayError


def apply_batch(ops: list[Op], st: BatchState) -> tuple[list[Result], BatchWrites]:
    """Apply ``ops`` in order. A request refused breaks no other, except within
    a linked chain (TigerBeetle's ``linked`` flag): a request with ``linked``
    set is chained to the next, and the chain ends at the first without it. A
    chain applies whole or not at all: if one of its requests fails, that one
    gets its own error, every other one ``linked_event_failed`` naming it, and
    the state is as if the chain had never run."""
    w = BatchWrites()
    results: list[Result] = []
    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        if not op.linked:  # the usual case: a chain of one
            results.append(_one(op, st, w, op.amount if isinstance(op, CreateTransfer) else 0, False))
            i += 1
            continue
        j = i
        while j < n and ops[j].linked:
            j += 1
        if j == n:  # the batch ends inside the chain
            failed = j - 1 - i
            cause = errors.linked_event_chain_open()
            results.extend(
                cause if k == failed else errors.linked_event_failed(failed, cause) for k in range(j - i)
            )
            break
        results.extend(_chain(ops[i : j + 1], st, w))
        i = j + 1
    return results, w


def _one(op: Op, st: BatchState, w: BatchWrites, amount: int, balancing: bool) -> Result:
    """One request; a create takes ``amount`` (``balancing``: at most that,
    as much as its debit account has available)."""
    key = op.idempotency_key
    h = op.request_hash() if key is not None else None
    if key is not None and key in st.seen_keys:
        prev_hash, prev = st.seen_keys[key]
        return prev if prev_hash == h else errors.idempotency_conflict(key)
    if isinstance(op, CreateTransfer):
        r = _create(op, st, w, h, amount, balancing)
    else:
        r = _resolve(op, st, w, h)
    if isinstance(r, Transfer) and key is not None and r.id:
        st.seen_keys[key] = (h, r)
    return r


def _chain(chain: list[Op], st: BatchState, w: BatchWrites) -> list[Result]:
    """A linked chain, all or nothing (see :func:`apply_batch`). Its split legs
    (``CreateTransfer.split``) share one amount: each takes what its debit
    account has available of what is still needed, the last split leg all of
    the rest (or fails), so a charge is split across funding sources on the
    balances read under the write lock, never on a stale plan."""
    undo = _Undo(st, w)
    last_split = max(
        (k for k, op in enumerate(chain) if isinstance(op, CreateTransfer) and op.split), default=-1
    )
    taken = 0
    results: list[Result] = []
    for k, op in enumerate(chain):
        undo.save(op)
        if isinstance(op, CreateTransfer) and op.split:
            need = max(op.amount - taken, 0)
            r = _one(op, st, w, need, k != last_split) if need else _skipped(op, st)
            if isinstance(r, Transfer):
                taken += r.amount
            elif r.code == "insufficient_funds":  # name what the split legs had together
                dr = st.accounts[op.debit_account_id]
                have = taken + max(dr.credits_posted - dr.debits_posted - dr.debits_pending, 0)
                r = errors.exceeds_credits(op.debit_account_id, have, op.amount)
        else:
            r = _one(op, st, w, op.amount if isinstance(op, CreateTransfer) else 0, False)
        if isinstance(r, TollwayError):
            undo.restore()
            return [r if m == k else errors.linked_event_failed(k, r) for m in range(len(chain))]
        results.append(r)
    return results


def _skipped(op: CreateTransfer, st: BatchState) -> Transfer:
    """A split leg that takes nothing: no transfer is written, and its result
    has no id and amount 0."""
    return Transfer(
        "",
        op.debit_account_id,
        op.credit_account_id,
        0,
        PENDING if op.pending else 0,
        None,
        None,
        None,
        op.description,
        st.now_us,
    )


class _Undo:
    """What a chain changed, to put back if it fails: the accounts and
    pendings it touched (as they were), the keys it added, and how long each
    list of writes was."""

    def __init__(self, st: BatchState, w: BatchWrites) -> None:
        self.st, self.w = st, w
        self.accounts: dict[str, tuple[int, int, int, int, bool]] = {}
        self.pendings: dict[str, tuple[bool, str | None]] = {}
        self.marks = (len(w.transfers), len(w.new_pending), len(w.resolved_pending), len(w.usage))

    def _account(self, aid: str) -> None:
        a = self.st.accounts.get(aid)
        if a is not None and aid not in self.accounts:
            dirty = aid in self.w.dirty_accounts
            self.accounts[aid] = (
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted,
                dirty,
            )

    def save(self, op: Op) -> None:
        if isinstance(op, CreateTransfer):
            self._account(op.debit_account_id)
            self._account(op.credit_account_id)
            return
        ps = self.st.pendings.get(op.pending_id)
        if ps is not None:
            if op.pending_id not in self.pendings:  # open or not, as before the chain
                self.pendings[op.pending_id] = (ps.open, ps.resolved_as)
            self._account(ps.transfer.debit_account_id)
            self._account(ps.transfer.credit_account_id)

    def restore(self) -> None:
        st, w = self.st, self.w
        for aid, (dp, dpo, cp, cpo, dirty) in self.accounts.items():
            a = st.accounts[aid]
            a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted = dp, dpo, cp, cpo
            if not dirty:
                w.dirty_accounts.discard(aid)
        t, np, rp, u = self.marks
        for pending in w.new_pending[np:]:  # reservations the chain made
            st.pendings.pop(pending[0], None)
        for pid, (was_open, resolved_as) in self.pendings.items():
            ps = st.pendings.get(pid)
            if ps is not None:
                ps.open, ps.resolved_as = was_open, resolved_as
        for transfer in w.transfers[t:]:
            # A new transfer with a key: the key was unseen before (else a replay).
            if transfer[7] is not None:
                st.seen_keys.pop(transfer[7], None)
        del w.transfers[t:], w.new_pending[np:], w.resolved_pending[rp:], w.usage[u:]


def _record(t: Transfer, h: str | None, w: BatchWrites, usage: Usage | None) -> None:
    w.transfers.append(
        (
            t.id,
            t.debit_account_id,
            t.credit_account_id,
            t.amount,
            t.flags,
            t.pending_id,
            t.expires_at_us,
            t.idempotency_key,
            h,
            t.description,
            t.created_at_us,
        )
    )
    if usage is not None:
        w.usage.append(
            (
                new_id("ue"),
                t.id,
                t.debit_account_id,
                usage.customer_id,
                usage.meter,
                usage.quantity,
                usage.amount if usage.amount is not None else (0 if t.flags & VOID_PENDING else t.amount),
                usage.metadata,
                t.created_at_us,
                usage.metadata.get("model"),
            )
        )


def _create(
    op: CreateTransfer, st: BatchState, w: BatchWrites, h: str | None, amount: int, balancing: bool
) -> Result:
    dr = st.accounts.get(op.debit_account_id)
    if dr is None:
        return errors.account_not_found(op.debit_account_id, "debit_account_id")
    cr = st.accounts.get(op.credit_account_id)
    if cr is None:
        return errors.account_not_found(op.credit_account_id, "credit_account_id")
    if op.debit_account_id == op.credit_account_id:
        return errors.accounts_must_differ()
    if dr.flags & DEBITS_MUST_NOT_EXCEED_CREDITS:
        available = dr.credits_posted - dr.debits_posted - dr.debits_pending
        if balancing:  # as much as there is, up to the amount
            amount = min(amount, max(available, 0))
            if not amount:
                return _skipped(op, st)
        if amount > available:
            return errors.exceeds_credits(op.debit_account_id, max(available, 0), amount)
    if cr.flags & CREDITS_MUST_NOT_EXCEED_DEBITS:
        if cr.credits_pending + cr.credits_posted + amount > cr.debits_posted:
            return errors.exceeds_debits(op.credit_account_id)
    if (
        dr.debits_pending + dr.debits_posted + amount > MAX_AMOUNT
        or cr.credits_pending + cr.credits_posted + amount > MAX_AMOUNT
    ):
        return errors.overflow()
    expires = None
    if op.pending:
        timeout = op.timeout_s if op.timeout_s is not None else st.default_timeout_s
        expires = st.now_us + timeout * 1_000_000
        dr.debits_pending += amount
        cr.credits_pending += amount
    else:
        dr.debits_posted += amount
        cr.credits_posted += amount
    t = Transfer(
        new_id("tr"),
        op.debit_account_id,
        op.credit_account_id,
        amount,
        PENDING if op.pending else 0,
        None,
        expires,
        op.idempotency_key,
        op.description,
        st.now_us,
    )
    w.dirty_accounts.add(op.debit_account_id)
    w.dirty_accounts.add(op.credit_account_id)
    if op.pending:
        assert expires is not None
        st.pendings[t.id] = PendingState(t, open=True)
        w.new_pending.append((t.id, t.debit_account_id, t.credit_account_id, amount, t.description, expires))
    _record(t, h, w, op.usage)
    return t


def _resolve(op: ResolvePending, st: BatchState, w: BatchWrites, h: str | None) -> Result:
    ps = st.pendings.get(op.pending_id)
    if ps is None:
        return errors.transfer_not_found(op.pending_id)
    p = ps.transfer
    if not p.flags & PENDING:
        return errors.not_pending(op.pending_id)
    if not ps.open:
        return errors.already_resolved(op.pending_id, ps.resolved_as or "resolved")
    expired = op.expired
    if not expired and p.expires_at_us is not None and st.now_us >= p.expires_at_us:
        # Due: the timeout wins over a late post or void.
        _close(ps, st, w, None, None, None, expired=True)
        return errors.already_resolved(op.pending_id, "expired")
    if op.post:
        amount = p.amount if op.amount is None else op.amount
        if amount > p.amount:
            return errors.exceeds_pending(p.amount, amount)
        return _close(ps, st, w, op.idempotency_key, h, op.usage, expired=False, amount=amount)
    return _close(ps, st, w, op.idempotency_key, h, op.usage, expired=expired)


def _close(
    ps: PendingState,
    st: BatchState,
    w: BatchWrites,
    key: str | None,
    h: str | None,
    usage: Usage | None,
    *,
    expired: bool,
    amount: int | None = None,
) -> Transfer:
    p = ps.transfer
    dr = st.accounts[p.debit_account_id]
    cr = st.accounts[p.credit_account_id]
    dr.debits_pending -= p.amount
    cr.credits_pending -= p.amount
    if amount is not None:
        dr.debits_posted += amount
        cr.credits_posted += amount
        flags = POST_PENDING
    else:
        flags = VOID_PENDING | (EXPIRED if expired else 0)
    t = Transfer(
        new_id("tr"),
        p.debit_account_id,
        p.credit_account_id,
        amount if amount is not None else p.amount,
        flags,
        p.id,
        None,
        key,
        p.description,
        st.now_us,
    )
    ps.open = False
    ps.resolved_as = kind_of(flags).value
    w.dirty_accounts.add(p.debit_account_id)
    w.dirty_accounts.add(p.credit_account_id)
    w.resolved_pending.append(p.id)
    _record(t, h, w, usage)
    return t
