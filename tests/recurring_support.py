"""Shared by the recurring-cost tests: a runtime on a manual clock with a
wallet, and deployments and domains written straight to the database (the
tick needs no worker)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from conftest import settings_for
from tollway.core.clock import ManualClock
from tollway.core.ids import new_id
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_domains as D
from tollway.core.schema import wallet_authorizations as A
from tollway.core.storage import writer
from tollway.runtime import Runtime

START = 1_800_000_000_000_000
HOUR = 3_600
DAY_US = 86_400_000_000


class World:
    def __init__(self, rt: Runtime, clock: ManualClock) -> None:
        self.rt, self.clock = rt, clock
        self.wallet_id = ""
        self.alerts: list[dict[str, Any]] = []

    async def wallet(self, fund: int, policy: dict[str, Any] | None = None) -> str:
        w = await self.rt.wallets.create(owner="ops", policy=policy)
        if fund:
            await self.rt.wallets.topup(w.id, fund)
        self.wallet_id = w.id
        return w.id

    async def available(self) -> int:
        _, avail = await self.rt.wallets.balance(await self.rt.wallets.get(self.wallet_id))
        return avail

    async def deployment(self, name: str) -> str:
        now = self.clock.now_us()
        dep = new_id("dep")
        row = {
            "id": dep, "name": name, "wallet_id": self.wallet_id, "provider": "local", "live_version": 1,
            "hostnames": "[]", "status": "active", "last_request_at_us": now, "created_at_us": now,
            "updated_at_us": now,
        }  # fmt: skip
        async with writer(self.rt.engine).begin() as conn:
            await conn.execute(insert(P), [row])
        return dep

    async def domain(self, name: str, expires_in_days: float, renew: int = 1_000_000) -> str:
        now = self.clock.now_us()
        dom = new_id("dom")
        row = {
            "id": dom, "name": name, "provider": "local", "wallet_id": self.wallet_id, "status": "active",
            "renew_price": renew, "authorization_id": None,
            "expires_at_us": now + int(expires_in_days * DAY_US), "created_at_us": now, "updated_at_us": now,
        }  # fmt: skip
        async with writer(self.rt.engine).begin() as conn:
            await conn.execute(insert(D), [row])
        return dom

    async def authorizations(self, category: str) -> list[Any]:
        await self.rt.ledger.riders_committed()
        async with self.rt.engine.connect() as conn:
            q = select(A).where(A.c.wallet_id == self.wallet_id, A.c.category == category)
            return list((await conn.execute(q.order_by(A.c.created_at_us, A.c.id))).all())

    def next_interval(self) -> None:
        self.clock.advance(self.rt.settings.provision.billing_tick_seconds)


@contextlib.asynccontextmanager
async def world(db_url: str, tmp_path: Path, **provision: Any) -> AsyncIterator[World]:
    clock = ManualClock(START)
    s = settings_for(db_url, provision={"edge_port": 0, "data_dir": str(tmp_path / "prov"), **provision})
    rt = Runtime.build(s, clock=clock)
    w = World(rt, clock)
    rt.provision.dues.alert = w.alerts.append
    try:
        yield w
    finally:
        await rt.close()
