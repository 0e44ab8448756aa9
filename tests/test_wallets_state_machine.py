"""Random interleavings of authorize, capture, void, expire and revoke (which
voids the token's holds) against one wallet (a daily limit, a token
allowance), on SQLite and PostgreSQL. After every step: nothing is
overspent, every captured micro-USD is an authorization's capture, every hold
is accounted for, and the ledger sums to zero."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import hypothesis
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
from sqlalchemy import select

from conftest import settings_for
from test_ledger_state_machine import DbFactory, fresh_db  # noqa: F401  (the fixture)
from tollway.core.clock import ManualClock
from tollway.core.errors import TollwayError
from tollway.core.schema import DEBITS_MUST_NOT_EXCEED_CREDITS
from tollway.core.schema import ledger_pending as P
from tollway.core.schema import wallet_authorizations as A
from tollway.runtime import Runtime

R = TypeVar("R")
LIMIT = 10_000
ALLOWANCE = 8_000
START = int(dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000


class WalletMachine(RuleBasedStateMachine):
    fresh_db: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock(START)
        self.rt: Runtime | None = None
        self.url = ""
        self.token = ""
        self.token_id = ""
        self.auths: list[str] = []
        self.revoked = False
        self.approved_after_revoke = 0

    def run(self, aw: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(aw)

    @property
    def runtime(self) -> Runtime:
        assert self.rt is not None
        return self.rt

    @initialize(funding=st.integers(0, 20_000), batch_max=st.sampled_from([1, 2048]))
    def start(self, funding: int, batch_max: int) -> None:
        self.url = self.run(type(self).fresh_db())
        self.rt = Runtime.build(settings_for(self.url, ledger={"batch_max": batch_max}), clock=self.clock)

        async def setup() -> None:
            rt = self.runtime
            w = await rt.wallets.create(
                owner="ops", policy={"spending_limits": [{"amount": LIMIT, "interval": "daily"}]}
            )
            if funding:
                await rt.wallets.topup(w.id, funding)
            self.wallet_account = w.account_id
            t, self.token = await rt.wallets.grant(w.id, limits={"total_allowance": ALLOWANCE})
            self.token_id = t.id

        self.run(setup())

    def teardown(self) -> None:
        try:
            if self.rt is not None:
                self.run(self.rt.close())
        finally:
            self.loop.close()

    async def _authorize(self, amount: int, key: str, hold_s: int) -> None:
        try:
            d = await self.runtime.authorizer.authorize(
                self.token, amount=amount, payee="api.example.com", category="api_access",
                idempotency_key=key, hold_seconds=hold_s,
            )  # fmt: skip
        except TollwayError as e:
            assert e.code == "idempotency_conflict", e.code
            return
        if d.status == "approved" and d.id not in self.auths:  # (a replayed key returns its first answer)
            if self.revoked:
                self.approved_after_revoke += 1
            self.auths.append(d.id)

    @rule(amount=st.integers(1, 4_000), key=st.integers(0, 30), hold_s=st.sampled_from([3, 300]))
    def authorize(self, amount: int, key: int, hold_s: int) -> None:
        self.run(self._authorize(amount, f"k{key}", hold_s))

    @rule(reqs=st.lists(st.tuples(st.integers(1, 4_000), st.integers(0, 30)), min_size=2, max_size=8))
    def concurrently(self, reqs: list[tuple[int, int]]) -> None:
        async def go() -> None:
            await asyncio.gather(*[self._authorize(a, f"k{k}", 300) for a, k in reqs])

        self.run(go())

    async def _resolve(self, auth_id: str, pct: int | None) -> None:
        a = self.runtime.authorizer
        try:
            if pct is None:
                await a.void(auth_id)
            else:
                d = await a.get(auth_id)
                await a.capture(auth_id, d.amount * pct // 100)
        except TollwayError as e:
            allowed = ("authorization_not_open", "authorization_expired", "authorization_changed")
            assert e.code in allowed or (self.revoked and e.code == "token_revoked"), e.code

    @precondition(lambda self: self.auths)
    @rule(data=st.data(), pct=st.one_of(st.none(), st.integers(0, 100)))
    def resolve(self, data: st.DataObject, pct: int | None) -> None:
        self.run(self._resolve(data.draw(st.sampled_from(self.auths)), pct))

    @precondition(lambda self: len(self.auths) >= 2)
    @rule(data=st.data())
    def race_to_resolve(self, data: st.DataObject) -> None:
        aid = data.draw(st.sampled_from(self.auths))

        async def go() -> None:
            await asyncio.gather(self._resolve(aid, 100), self._resolve(aid, None), self._resolve(aid, 50))

        self.run(go())

    @rule(seconds=st.integers(0, 6), sweep=st.booleans())
    def advance_clock(self, seconds: int, sweep: bool) -> None:
        self.clock.advance(seconds=seconds)
        if sweep:

            async def go() -> None:
                await self.runtime.ledger.expire_due()
                await self.runtime.authorizer.sweep()

            self.run(go())

    @precondition(lambda self: not self.revoked)
    @rule()
    def revoke(self) -> None:
        self.run(self.runtime.authorizer.revoke(self.token_id))  # voids every hold it made
        self.revoked = True

    @invariant()
    def nothing_is_overspent_or_lost(self) -> None:
        if self.rt is None:
            return
        self.run(self._check())

    async def _check(self) -> None:
        rt = self.runtime
        await rt.ledger.riders_committed()
        accounts = {a.id: a for a in await rt.ledger.accounts()}
        assert sum(a.credits_posted - a.debits_posted for a in accounts.values()) == 0
        assert sum(a.credits_pending - a.debits_pending for a in accounts.values()) == 0
        for a in accounts.values():
            if a.flags & DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert a.debits_pending + a.debits_posted <= a.credits_posted, a
        w = accounts[self.wallet_account]
        assert w.debits_posted <= min(LIMIT, ALLOWANCE)
        async with rt.engine.connect() as conn:
            rows = (await conn.execute(select(A))).all()
            pending = {r[0] for r in await conn.execute(select(P.c.transfer_id))}
        assert w.debits_posted == sum(r.captured for r in rows if r.status == "captured")
        held = 0
        for r in rows:
            legs = json.loads(r.legs)
            first = legs[0][0] if legs else None
            if r.status != "approved":
                assert first not in pending, r  # a captured, voided or declined authorization holds nothing
            elif first in pending:
                held += r.amount
        assert w.debits_pending == held
        if self.revoked:  # a revoked token's holds were voided: nothing of it can be captured
            assert w.debits_pending == 0 and not any(r.status == "approved" for r in rows)
        assert self.approved_after_revoke == 0


def test_wallet_invariants_hold_under_random_interleavings(fresh_db: DbFactory) -> None:  # noqa: F811
    class Machine(WalletMachine):
        pass

    Machine.fresh_db = staticmethod(fresh_db)
    run_state_machine_as_test(
        Machine,
        settings=hypothesis.settings(
            max_examples=10,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
