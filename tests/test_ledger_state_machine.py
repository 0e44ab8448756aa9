"""The ledger against a Python model, driven by a hypothesis state machine.

Hypothesis runs random programs against a real :class:`~tollway.ledger.Ledger`
(a fresh database per example, on every backend, time on a ``ManualClock``):
create customer accounts, fund them, single-phase transfers, reservations,
posts (full, partial, and more than reserved), voids, moving the clock, expiry
sweeps, re-sends under an idempotency key (same body and altered body), and
batches of several of these submitted at once with ``asyncio.gather`` so they
share one group-commit batch in a random order.

Invariants it tries to break, checked after every step:

- the ledger sums to zero: over all accounts, credits_posted - debits_posted
  and credits_pending - debits_pending each add up to 0;
- no bounded account ever has debits_pending + debits_posted > credits_posted;
- a pending transfer resolves (post, void or expiry) at most once, and
  ``ledger_pending`` holds exactly the reservations still open;
- every balance, and the number of transfer rows, equals the model's.

The model is sequential.  A concurrent batch is accepted when the outcomes the
ledger reported are exactly what the model produces for at least one serial
order of the batch (linearizability); the model then continues from that order.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from conftest import _truncate, settings_for
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.core.schema import DEBITS_MUST_NOT_EXCEED_CREDITS, SYSTEM_ACCOUNTS
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import ledger_transfers as T
from tollway.ledger.types import Transfer, kind_of
from tollway.runtime import Runtime

MAX_CUSTOMERS = 4
KEYS = [f"idem-{i}" for i in range(8)]
RESOLVED_CODE = {
    "post_pending": "pending_transfer_already_posted",
    "void_pending": "pending_transfer_already_voided",
    "expired": "pending_transfer_expired",
}

R = TypeVar("R")
Kind = Literal["transfer", "reserve", "post", "void", "sweep"]
Outcome = Transfer | TollwayError | int  # an int is what expire_due() returned
DbFactory = Callable[[], Coroutine[Any, Any, str]]  # makes an empty, migrated database: its URL


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Req:
    """One concrete ledger call."""

    kind: Kind
    debit: str = ""
    credit: str = ""
    amount: int | None = None
    timeout_s: int | None = None
    pending_id: str = ""
    key: str | None = None

    def body(self) -> tuple[object, ...]:
        """What an idempotency key is bound to."""
        if self.kind in ("transfer", "reserve"):
            return ("create", self.debit, self.credit, self.amount, self.kind == "reserve", self.timeout_s)
        return (self.kind, self.pending_id, self.amount)

    def altered(self) -> Req:
        """The same key with a different body."""
        if self.kind == "void":
            return replace(self, kind="post", amount=None)
        return replace(self, amount=(self.amount or 0) + 1)


# Specs are what hypothesis draws: indices resolved against the model when the
# step runs, so a spec never refers to an account or transfer that is not there.


@dataclass(frozen=True)
class Fund:
    customer: int
    amount: int
    key: str | None

    def resolve(self, m: Model) -> Req | None:
        if not m.customers:
            return None
        return Req("transfer", "sys_funding", m.customer(self.customer), self.amount, key=self.key)


@dataclass(frozen=True)
class Spend:
    customer: int
    to: int
    amount: int
    key: str | None

    def resolve(self, m: Model) -> Req | None:
        if not m.customers:
            return None
        return Req("transfer", m.customer(self.customer), m.destination(self.to), self.amount, key=self.key)


@dataclass(frozen=True)
class Reserve:
    customer: int
    to: int
    amount: int
    timeout_s: int | None
    key: str | None

    def resolve(self, m: Model) -> Req | None:
        if not m.customers:
            return None
        debit, credit = m.customer(self.customer), m.destination(self.to)
        return Req("reserve", debit, credit, self.amount, self.timeout_s, key=self.key)


@dataclass(frozen=True)
class Post:
    pending: int
    # None: post everything (no amount sent); 0: the full amount, sent
    # explicitly; < 0: partial; > 0: more than reserved (must be refused).
    delta: int | None
    key: str | None

    def resolve(self, m: Model) -> Req | None:
        pid = m.pending_at(self.pending)
        amount = None
        if self.delta is not None:
            held = m.pendings[pid].amount if pid in m.pendings else 1
            amount = max(1, held + self.delta)
        return Req("post", amount=amount, pending_id=pid, key=self.key)


@dataclass(frozen=True)
class Void:
    pending: int
    key: str | None

    def resolve(self, m: Model) -> Req | None:
        return Req("void", pending_id=m.pending_at(self.pending), key=self.key)


@dataclass(frozen=True)
class Resend:
    """Send an earlier keyed request again: unchanged, or altered."""

    sent: int
    alter: bool

    def resolve(self, m: Model) -> Req | None:
        if not m.sent:
            return None
        req = m.sent[self.sent % len(m.sent)]
        return req.altered() if self.alter else req


@dataclass(frozen=True)
class Sweep:
    def resolve(self, m: Model) -> Req | None:
        return Req("sweep")


Spec = Fund | Spend | Reserve | Post | Void | Resend | Sweep

keys = st.one_of(st.none(), st.none(), st.sampled_from(KEYS))
index = st.integers(0, 20)
funds = st.builds(Fund, index, st.integers(1, 10_000), keys)
spends = st.builds(Spend, index, index, st.integers(1, 2_000), keys)
reserves = st.builds(Reserve, index, index, st.integers(1, 2_000), st.none() | st.integers(1, 10), keys)
posts = st.builds(
    Post, index, st.one_of(st.none(), st.just(0), st.integers(-2_000, -1), st.integers(1, 3)), keys
)
voids = st.builds(Void, index, keys)
resends = st.builds(Resend, index, st.booleans())
any_spec: st.SearchStrategy[Spec] = st.one_of(
    funds, spends, reserves, reserves, reserves, posts, posts, voids, resends, st.just(Sweep())
)


# ------------------------------------------------------------------------- model


@dataclass
class Bal:
    bounded: bool
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)


@dataclass
class Pend:
    debit: str
    credit: str
    amount: int
    expires_at_us: int
    state: str = "open"  # or post_pending | void_pending | expired


def _error(actual: Outcome, code: str) -> str | None:
    if isinstance(actual, TollwayError) and actual.code == code:
        return None
    return f"expected error {code}, got {actual!r}"


@dataclass
class Model:
    now_us: int
    default_timeout_s: int
    accounts: dict[str, Bal]
    customers: list[str] = field(default_factory=list)
    pendings: dict[str, Pend] = field(default_factory=dict)  # every reservation, in order
    plain: set[str] = field(default_factory=set)  # transfers that are not reservations
    keys: dict[str, tuple[tuple[object, ...], Transfer]] = field(default_factory=dict)
    sent: list[Req] = field(default_factory=list)  # every keyed request, for re-sending
    rows: int = 0  # rows expected in ledger_transfers

    def copy(self) -> Model:
        return Model(
            self.now_us,
            self.default_timeout_s,
            {k: replace(v) for k, v in self.accounts.items()},
            list(self.customers),
            {k: replace(v) for k, v in self.pendings.items()},
            set(self.plain),
            dict(self.keys),
            list(self.sent),
            self.rows,
        )

    def customer(self, i: int) -> str:
        return self.customers[i % len(self.customers)]

    def destination(self, i: int) -> str:
        """Mostly sys_revenue, else a customer (possibly the debit account itself)."""
        return self.customer(i // 4) if i % 4 == 3 else "sys_revenue"

    def pending_at(self, i: int) -> str:
        """Mostly an open reservation, else any (maybe resolved) one."""
        every = list(self.pendings)
        live = [k for k, p in self.pendings.items() if p.state == "open"]
        if live and i % 3 != 2:
            return live[(i // 3) % len(live)]
        return every[i % len(every)] if every else "tr_missing"

    # One request, applied serially. Returns None when ``actual`` is what the
    # model expects (and updates the model), else why not.

    def apply(self, req: Req, actual: Outcome) -> str | None:
        if req.kind == "sweep":
            due = [p for p in self.pendings.values() if p.state == "open" and p.expires_at_us <= self.now_us]
            for p in due:
                self._release(p, "expired")
            return None if actual == len(due) else f"expire_due() returned {actual!r}, expected {len(due)}"
        if req.key is not None:
            self.sent.append(req)
            if req.key in self.keys:
                body, first = self.keys[req.key]
                if body != req.body():
                    return _error(actual, "idempotency_key_reused")
                return None if actual == first else f"replay returned {actual!r}, expected {first!r}"
        why = self._create(req, actual) if req.kind in ("transfer", "reserve") else self._resolve(req, actual)
        if why is None and req.key is not None and isinstance(actual, Transfer):
            self.keys[req.key] = (req.body(), actual)
        return why

    def _expect(
        self,
        actual: Outcome,
        req: Req,
        kind: str,
        debit: str,
        credit: str,
        amount: int,
        pending_id: str | None = None,
        expires_at_us: int | None = None,
    ) -> str | None:
        want = (kind, debit, credit, amount, pending_id, expires_at_us, req.key, "", self.now_us)
        if not isinstance(actual, Transfer):
            return f"expected a {kind} transfer {want}, got {actual!r}"
        got = (
            actual.kind.value,
            actual.debit_account_id,
            actual.credit_account_id,
            actual.amount,
            actual.pending_id,
            actual.expires_at_us,
            actual.idempotency_key,
            actual.description,
            actual.created_at_us,
        )
        return None if got == want else f"expected {want}, got {got}"

    def _create(self, req: Req, actual: Outcome) -> str | None:
        assert req.amount is not None
        dr, cr = self.accounts[req.debit], self.accounts[req.credit]
        if req.debit == req.credit:
            return _error(actual, "accounts_must_differ")
        if dr.bounded and req.amount > dr.credits_posted - dr.debits_posted - dr.debits_pending:
            return _error(actual, "insufficient_funds")
        pending = req.kind == "reserve"
        expires = None
        if pending:
            expires = self.now_us + (req.timeout_s or self.default_timeout_s) * 1_000_000
        kind = "pending" if pending else "posted"
        why = self._expect(actual, req, kind, req.debit, req.credit, req.amount, None, expires)
        if why is not None:
            return why
        assert isinstance(actual, Transfer)
        if pending:
            assert expires is not None
            dr.debits_pending += req.amount
            cr.credits_pending += req.amount
            self.pendings[actual.id] = Pend(req.debit, req.credit, req.amount, expires)
        else:
            dr.debits_posted += req.amount
            cr.credits_posted += req.amount
            self.plain.add(actual.id)
        self.rows += 1
        return None

    def _resolve(self, req: Req, actual: Outcome) -> str | None:
        p = self.pendings.get(req.pending_id)
        if p is None:
            code = "transfer_not_pending" if req.pending_id in self.plain else "transfer_not_found"
            return _error(actual, code)
        if p.state != "open":
            return _error(actual, RESOLVED_CODE[p.state])
        if self.now_us >= p.expires_at_us:  # due: the timeout wins over a late post or void
            self._release(p, "expired")
            return _error(actual, "pending_transfer_expired")
        if req.kind == "void":
            why = self._expect(actual, req, "void_pending", p.debit, p.credit, p.amount, req.pending_id)
            if why is None:
                self._release(p, "void_pending")
                assert isinstance(actual, Transfer)
                self.plain.add(actual.id)
            return why
        amount = p.amount if req.amount is None else req.amount
        if amount > p.amount:
            return _error(actual, "amount_exceeds_pending")
        why = self._expect(actual, req, "post_pending", p.debit, p.credit, amount, req.pending_id)
        if why is None:
            self._release(p, "post_pending")
            self.accounts[p.debit].debits_posted += amount
            self.accounts[p.credit].credits_posted += amount
            assert isinstance(actual, Transfer)
            self.plain.add(actual.id)
        return why

    def _release(self, p: Pend, state: str) -> None:
        self.accounts[p.debit].debits_pending -= p.amount
        self.accounts[p.credit].credits_pending -= p.amount
        p.state = state
        self.rows += 1


def linearize(model: Model, reqs: list[Req], outcomes: list[Outcome]) -> Model:
    """The model after the first serial order of ``reqs`` that explains ``outcomes``."""
    first_failure = ""
    for order in itertools.permutations(range(len(reqs))):
        m = model.copy()
        for i in order:
            why = m.apply(reqs[i], outcomes[i])
            if why is not None:
                first_failure = first_failure or f"in submission order, request {i} ({reqs[i]}): {why}"
                break
        else:
            return m
    detail = "\n".join(f"  {r} -> {o!r}" for r, o in zip(reqs, outcomes, strict=True))
    raise AssertionError(f"no serial order explains the outcomes ({first_failure}):\n{detail}")


# ------------------------------------------------------------------- the machine


class LedgerMachine(RuleBasedStateMachine):
    fresh_db: DbFactory  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.rt: Runtime | None = None
        self.url = ""
        self.model = Model(self.clock.now_us(), 300, {})

    def run(self, aw: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(aw)

    @property
    def runtime(self) -> Runtime:
        assert self.rt is not None
        return self.rt

    @initialize(
        batch_max=st.sampled_from([1, 3, 2048]),
        default_timeout_s=st.sampled_from([5, 300]),
        customers=st.integers(1, MAX_CUSTOMERS),
        funding=st.integers(0, 20_000),
    )
    def start(self, batch_max: int, default_timeout_s: int, customers: int, funding: int) -> None:
        self.url = self.run(type(self).fresh_db())
        over = {"ledger": {"batch_max": batch_max, "pending_timeout_seconds": default_timeout_s}}
        self.rt = Runtime.build(settings_for(self.url, **over), clock=self.clock)
        self.model = Model(
            self.clock.now_us(),
            default_timeout_s,
            {i: Bal(bounded=False) for i in SYSTEM_ACCOUNTS},
        )
        for i in range(customers):
            self.create_customer()
            if funding:
                self._run([Fund(i, funding, None)])

    def teardown(self) -> None:
        try:
            if self.rt is not None:
                self.run(self.rt.close())
        finally:
            self.loop.close()
        if self.url.startswith("sqlite:///"):
            for suffix in ("", "-wal", "-shm"):
                Path(self.url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)

    # ------------------------------------------------------------ stepping

    async def _call(self, req: Req) -> Outcome:
        L = self.runtime.ledger
        try:
            match req.kind:
                case "transfer":
                    assert req.amount is not None
                    return await L.transfer(req.debit, req.credit, req.amount, idempotency_key=req.key)
                case "reserve":
                    assert req.amount is not None
                    return await L.reserve(
                        req.debit, req.credit, req.amount, timeout_s=req.timeout_s, idempotency_key=req.key
                    )
                case "post":
                    return await L.post(req.pending_id, req.amount, idempotency_key=req.key)
                case "void":
                    return await L.void(req.pending_id, idempotency_key=req.key)
                case "sweep":
                    return await L.expire_due()
                case _:
                    raise AssertionError(req.kind)
        except TollwayError as e:
            return e

    async def _gather(self, reqs: list[Req]) -> list[Outcome]:
        return list(await asyncio.gather(*(self._call(r) for r in reqs)))

    def _run(self, specs: list[Spec]) -> None:
        reqs = [r for s in specs if (r := s.resolve(self.model)) is not None]
        if reqs:
            outcomes = self.run(self._gather(reqs))
            self.model = linearize(self.model, reqs, outcomes)

    # --------------------------------------------------------------- rules

    @precondition(lambda self: len(self.model.customers) < MAX_CUSTOMERS)
    @rule()
    def create_customer(self) -> None:
        acct = self.run(self.runtime.ledger.create_account("customer", name="c"))
        assert acct.flags & DEBITS_MUST_NOT_EXCEED_CREDITS
        self.model.accounts[acct.id] = Bal(bounded=True)
        self.model.customers.append(acct.id)

    @precondition(lambda self: self.model.customers)
    @rule(spec=funds)
    def fund(self, spec: Fund) -> None:
        self._run([spec])

    @precondition(lambda self: self.model.customers)
    @rule(spec=spends)
    def transfer(self, spec: Spend) -> None:
        self._run([spec])

    @precondition(lambda self: self.model.customers)
    @rule(spec=reserves)
    def reserve(self, spec: Reserve) -> None:
        self._run([spec])

    @precondition(lambda self: self.model.pendings)
    @rule(spec=posts)
    def post(self, spec: Post) -> None:
        self._run([spec])

    @precondition(lambda self: self.model.pendings)
    @rule(spec=voids)
    def void(self, spec: Void) -> None:
        self._run([spec])

    @rule(spec=resends)
    def resend(self, spec: Resend) -> None:
        self._run([spec])

    @rule(data=st.data(), post=st.booleans())
    def resolve_a_transfer_that_is_not_pending(self, data: st.DataObject, post: bool) -> None:
        tid = data.draw(st.sampled_from(["tr_missing", *sorted(self.model.plain)]))
        req = Req("post" if post else "void", pending_id=tid)
        self.model = linearize(self.model, [req], self.run(self._gather([req])))

    @rule(seconds=st.integers(0, 15), sweep=st.booleans())
    def advance_clock(self, seconds: int, sweep: bool) -> None:
        """Move time; then sweep with expire_due(), or leave due reservations to
        meet a late post or void (the timeout must win)."""
        self.clock.advance(seconds=seconds)
        self.model.now_us = self.clock.now_us()
        if sweep:
            self._run([Sweep()])

    @rule(specs=st.lists(any_spec, min_size=2, max_size=6))
    def concurrently(self, specs: list[Spec]) -> None:
        self._run(specs)

    # ---------------------------------------------------------- invariants

    @invariant()
    def ledger_matches_model(self) -> None:
        if self.rt is None:
            return
        self.run(self._check())

    async def _check(self) -> None:
        rt = self.runtime
        m = self.model
        accounts = {a.id: a for a in await rt.ledger.accounts()}
        async with rt.engine.connect() as conn:
            open_ids = set((await conn.execute(select(P.c.transfer_id))).scalars())
            q = select(T.c.pending_id, T.c.flags).where(T.c.pending_id.is_not(None))
            resolutions = [(r[0], r[1]) for r in await conn.execute(q)]
            rows = (await conn.execute(select(func.count()).select_from(T))).scalar_one()

        assert sum(a.credits_posted - a.debits_posted for a in accounts.values()) == 0
        assert sum(a.credits_pending - a.debits_pending for a in accounts.values()) == 0
        for a in accounts.values():
            if a.flags & DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert a.debits_pending + a.debits_posted <= a.credits_posted, a

        assert set(accounts) == set(m.accounts)
        for aid, bal in m.accounts.items():
            a = accounts[aid]
            got = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            assert got == bal.as_tuple(), f"{aid}: ledger {got}, model {bal.as_tuple()}"
        for aid in m.customers:  # the point read (a separate connection on SQLite) agrees
            assert await rt.ledger.get_account(aid) == accounts[aid]

        counts = Counter(pid for pid, _ in resolutions)
        assert all(n == 1 for n in counts.values()), f"resolved more than once: {counts.most_common(3)}"
        assert open_ids == {pid for pid, p in m.pendings.items() if p.state == "open"}
        resolved = {pid: kind_of(flags).value for pid, flags in resolutions}
        assert resolved == {pid: p.state for pid, p in m.pendings.items() if p.state != "open"}
        assert rows == m.rows


# --------------------------------------------------------------------- the test


@pytest.fixture
def fresh_db(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> DbFactory:
    """A factory of empty, migrated databases on ``db_url``'s backend."""
    if db_url.startswith("sqlite"):
        template: Path = request.getfixturevalue("sqlite_template")

        async def fresh_sqlite() -> str:
            dest = tmp_path / f"{uuid.uuid4().hex}.db"
            shutil.copy(template, dest)
            return f"sqlite:///{dest}"

        return fresh_sqlite

    async def fresh_postgres() -> str:
        await _truncate(db_url)
        return db_url

    return fresh_postgres


def test_ledger_matches_model(fresh_db: DbFactory) -> None:
    class Machine(LedgerMachine):
        pass

    Machine.fresh_db = staticmethod(fresh_db)
    run_state_machine_as_test(
        Machine,
        settings=hypothesis.settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


# Regression: Ledger.close() once closed the WAL checkpointer's sqlite3
# connection while a checkpoint was still running on it in a worker thread
# (cancelling a to_thread task stops the wait, not the thread), which
# segfaulted. The test makes the checkpoint slow so the race is certain.


async def test_close_waits_for_a_running_wal_checkpoint(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    closed_mid_checkpoint: list[bool] = []

    class SlowCheckpoints(sqlite3.Connection):
        busy = False

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if "wal_checkpoint" not in sql:
                return super().execute(sql, *args)
            self.busy = True
            started.set()
            try:
                release.wait(5)  # a checkpoint that takes a while
                return super().execute(sql, *args)
            finally:
                self.busy = False

        def close(self) -> None:
            closed_mid_checkpoint.append(self.busy)
            super().close()

    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **kw: real_connect(*a, **{"factory": SlowCheckpoints, **kw})
    )
    db = tmp_path / "ckpt.db"
    shutil.copy(sqlite_template, db)
    rt = Runtime.build(settings_for(f"sqlite:///{db}"))
    try:
        acct = await rt.ledger.create_account("customer")
        await rt.ledger.transfer("sys_funding", acct.id, 1)  # starts the writer and the checkpointer
        assert await asyncio.to_thread(started.wait, 5), "no checkpoint ran"
        closing = asyncio.create_task(rt.close())
        await asyncio.sleep(0.2)  # close() should now be waiting for the checkpoint
        release.set()
        await closing
    finally:
        release.set()
        await asyncio.sleep(0.05)  # let the worker thread finish
    assert True not in closed_mid_checkpoint, "closed the connection under a running checkpoint"
