"""Recurring costs, charged by the billing tick to the owning wallet through
the purchase path (one wallet authorization each, payee the provider):

- hosting (category ``hosting``): each process adds its deployments' live
  worker time and routed requests to ``provision_billing``; a tick charges
  what is owed since the last charge (:mod:`tollway.provision.metering`).
  The charge is claimed by compare-and-set on the billed total with the
  interval's key (``hosting:<deployment>:<interval>``, the wallet
  authorization's idempotency key), so processes ticking together bill once;
  a process that dies mid-charge leaves the key pending, and a later tick
  resumes it (the authorization, idempotent by key, is decided once).
- domain renewals (category ``domains``): a domain within ``renew_days_before``
  of expiry is renewed for a year (key ``renew:<domain>:<expiry>:<interval>``;
  the new expiry is a compare-and-set on the old one, so a term is renewed once).

A refused charge (insufficient funds, a spending limit, a blocked category)
goes to :mod:`tollway.provision.dues` (grace, suspension); a charge that
succeeds lifts it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.core.schema import provision_billing as B
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_domains as D
from tollway.core.schema import wallet_authorizations as A
from tollway.core.storage import writer
from tollway.provision.config import ProvisionConfig
from tollway.provision.domains import YEAR_US
from tollway.provision.dues import Dues
from tollway.provision.metering import owed
from tollway.provision.providers.base import Provider
from tollway.provision.purchase import DoneElsewhere, Purchases
from tollway.wallets.authorize import RECURRING, Decision

log = logging.getLogger("tollway.provision")
_DAY_US = 86_400_000_000
PENDING_LEASE_US = 600_000_000  # a charge left pending this long (its process died) is resumed


class _Renewed(Exception):
    """The term was renewed meanwhile under another authorization (a renewal by
    hand, another interval's key): this charge is voided."""


class Recurring:
    def __init__(
        self,
        cfg: ProvisionConfig,
        engine: AsyncEngine,
        clock: Clock,
        purchases: Purchases,
        dues: Dues,
        provider: Provider,
        lifted: Callable[[], None],
    ) -> None:
        self.cfg, self.engine, self.clock = cfg, engine, clock
        self.purchases, self.dues, self.provider = purchases, dues, provider
        self.lifted = lifted  # a suspension was lifted: routes change

    def interval(self) -> int:
        return self.clock.now_us() // int(self.cfg.billing_tick_seconds * 1_000_000)

    # ---------------------------------------------------------------- usage

    async def record(self, usage: dict[str, tuple[int, int]]) -> None:
        """Add live worker microseconds and requests per deployment (any process)."""
        now = self.clock.now_us()
        for dep, (us, n) in usage.items():
            if us <= 0 and n <= 0:
                continue
            add = update(B).where(B.c.deployment_id == dep)
            add = add.values(worker_us=B.c.worker_us + us, requests=B.c.requests + n, updated_at_us=now)
            async with writer(self.engine).begin() as conn:
                if (await conn.execute(add)).rowcount == 1:
                    continue
                wallet = (await conn.execute(select(P.c.wallet_id).where(P.c.id == dep))).scalar()
            if wallet is None:
                continue
            row = {
                "deployment_id": dep, "wallet_id": wallet, "worker_us": us, "requests": n, "billed": 0,
                "last_interval": -1, "pending_key": None, "pending_amount": 0, "pending_at_us": None,
                "updated_at_us": now,
            }  # fmt: skip
            try:
                async with writer(self.engine).begin() as conn:
                    await conn.execute(insert(B), [row])
            except IntegrityError:  # another process made the row meanwhile: add to it
                async with writer(self.engine).begin() as conn:
                    await conn.execute(add)

    async def usage(self, deployment_id: str) -> dict[str, Any]:
        """A deployment's metered use and what it has been billed."""
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(B).where(B.c.deployment_id == deployment_id))).first()
        if r is None:
            return {"worker_us": 0, "requests": 0, "owed": 0, "billed": 0}
        total = owed(r.worker_us, r.requests, self.cfg.nanos_per_worker_second, self.cfg.nanos_per_request)
        return {"worker_us": r.worker_us, "requests": r.requests, "owed": total, "billed": r.billed}

    # ------------------------------------------------------------------ tick

    async def tick(self) -> dict[str, Any]:
        """Charge hosting and renew what is due; the dues that follow."""
        interval = self.interval()
        report: dict[str, Any] = {"interval": interval, "charged": [], "renewed": [], "failed": []}
        await self._hosting(interval, report)
        await self._renewals(interval, report)
        return report

    async def _hosting(self, interval: int, report: dict[str, Any]) -> None:
        now = self.clock.now_us()
        q = (
            select(B, P.c.name)
            .join(P, P.c.id == B.c.deployment_id)
            .where(P.c.status == "active")
            .order_by(B.c.deployment_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        for r in rows:
            if r.pending_key is not None:
                if r.pending_at_us < now - PENDING_LEASE_US:  # its process died mid-charge
                    await self._settle(r, r.pending_key, r.pending_amount, report)
                continue
            due = owed(r.worker_us, r.requests, self.cfg.nanos_per_worker_second, self.cfg.nanos_per_request)
            due -= r.billed
            if due <= 0 or r.last_interval >= interval:
                continue
            key = f"hosting:{r.deployment_id}:{interval}"
            async with writer(self.engine).begin() as conn:
                claimed = await conn.execute(
                    update(B)
                    .where(
                        B.c.deployment_id == r.deployment_id,
                        B.c.billed == r.billed,
                        B.c.pending_key.is_(None),
                        B.c.last_interval < interval,
                    )
                    .values(
                        billed=B.c.billed + due,
                        last_interval=interval,
                        pending_key=key,
                        pending_amount=due,
                        pending_at_us=now,
                        updated_at_us=now,
                    )
                )
            if claimed.rowcount == 1:  # else another process bills this interval
                await self._settle(r, key, due, report)

    async def _settle(self, r: Any, key: str, amount: int, report: dict[str, Any]) -> None:
        async def nothing(_: Decision) -> None:
            return None

        memo = f"hosting deployment {r.deployment_id} ({r.name}): metered use"
        try:
            d = await self.purchases.recurring(
                r.wallet_id, amount=amount, category="hosting", key=key, memo=memo, work=nothing
            )
        except TollwayError as e:
            if e.status == 402:  # refused: still owed, the next interval tries again
                await self._release(r.deployment_id, key, amount)
                due = await self.dues.failed(
                    "deployment", r.deployment_id, r.wallet_id, r.name, amount, e.code
                )
                report["failed"].append({**due.to_dict(), "key": key})
                return
            if e.code not in ("authorization_not_open", "authorization_expired"):
                raise  # left pending: resumed by a later tick
            # A resumed charge that another process is resolving, or whose hold ended untaken.
            status = await self._status(key)
            if status in ("voided", "expired", "declined"):
                await self._release(r.deployment_id, key, amount)
            elif status == "captured":
                await self._clear(r.deployment_id, key)
            return
        await self._clear(r.deployment_id, key)
        report["charged"].append({"deployment_id": r.deployment_id, "name": r.name, "amount": amount,
                                  "authorization_id": d.id, "key": key})  # fmt: skip
        if await self.dues.paid("deployment", r.deployment_id) is not None:
            self.lifted()

    async def _release(self, deployment_id: str, key: str, amount: int) -> None:
        """The charge under ``key`` took nothing: it is owed again."""
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(B)
                .where(B.c.deployment_id == deployment_id, B.c.pending_key == key)
                .values(billed=B.c.billed - amount, pending_key=None, pending_amount=0, pending_at_us=None)
            )

    async def _clear(self, deployment_id: str, key: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(B)
                .where(B.c.deployment_id == deployment_id, B.c.pending_key == key)
                .values(pending_key=None, pending_amount=0, pending_at_us=None)
            )

    async def _status(self, key: str) -> str | None:
        """The status of the wallet authorization made under ``key``."""
        await self.purchases.authorizer.ledger.riders_committed()  # its record rides with the ledger
        async with self.engine.connect() as conn:
            q = select(A.c.status).where(A.c.idempotency_key == f"{RECURRING}:{key}")
            return (await conn.execute(q)).scalar()

    async def _renewals(self, interval: int, report: dict[str, Any]) -> None:
        horizon = self.clock.now_us() + int(self.cfg.renew_days_before * _DAY_US)
        async with self.engine.connect() as conn:
            q = select(D).where(D.c.status == "active", D.c.expires_at_us <= horizon).order_by(D.c.name)
            rows = (await conn.execute(q)).all()
        for dom in rows:
            await self._renew(dom, interval, report)

    async def _renew(self, dom: Any, interval: int, report: dict[str, Any]) -> None:
        term = dom.expires_at_us
        renewed: list[bool] = []  # by this call (not a replay of the key's captured decision)

        async def work(d: Decision) -> None:
            async with writer(self.engine).begin() as conn:
                r = await conn.execute(
                    update(D)
                    .where(D.c.id == dom.id, D.c.expires_at_us == term)
                    .values(
                        expires_at_us=term + YEAR_US, authorization_id=d.id, updated_at_us=self.clock.now_us()
                    )
                )
                if r.rowcount != 1:
                    by = (await conn.execute(select(D.c.authorization_id).where(D.c.id == dom.id))).scalar()
                    # One key is one authorization in every process: the process that
                    # renewed under it captures it, and a void here would release its hold.
                    raise DoneElsewhere if by == d.id else _Renewed
            try:
                await self.provider.renew(dom.name, 1)
            except BaseException:
                async with writer(self.engine).begin() as conn:
                    await conn.execute(
                        update(D).where(D.c.id == dom.id, D.c.expires_at_us == term + YEAR_US)
                        .values(expires_at_us=term)
                    )  # fmt: skip
                raise
            renewed.append(True)

        key = f"renew:{dom.id}:{term}:{interval}"
        try:
            d = await self.purchases.recurring(
                dom.wallet_id, amount=dom.renew_price, category="domains", key=key,
                memo=f"renew domain {dom.id} ({dom.name}) for 1y", work=work,
            )  # fmt: skip
        except (_Renewed, DoneElsewhere):
            return
        except TollwayError as e:
            if e.status != 402:
                raise
            due = await self.dues.failed("domain", dom.id, dom.wallet_id, dom.name, dom.renew_price, e.code)
            report["failed"].append({**due.to_dict(), "key": key})
            return
        if not renewed:  # a tick running beside this one renewed and captured: it reports it
            return
        report["renewed"].append({"domain_id": dom.id, "name": dom.name, "amount": d.captured,
                                  "expires_at_us": term + YEAR_US, "authorization_id": d.id})  # fmt: skip
        if await self.dues.paid("domain", dom.id) is not None:
            self.lifted()
