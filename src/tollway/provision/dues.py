"""What a wallet could not pay for, and what follows: a recurring charge
(hosting, a domain's renewal) that is refused starts a grace period
(``[provision] grace_hours``) and alerts the owner; past it the subject is
suspended (a deployment's edge answers 402 ``deployment_suspended``, a
domain is held: not renewed, its hostnames not routed); suspended for
``reclaim_after_hours``, the reaper reclaims it. A charge that succeeds
(the owner topped up) lifts it all on the next tick.

One row per unpaid subject (``provision_dues``). Each change is a
conditional write, so with several processes ticking each transition (and
its alert and audit row) happens once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import provision_dues as U
from tollway.core.storage import writer
from tollway.provision.config import ProvisionConfig
from tollway.wallets.audit import Audit

log = logging.getLogger("tollway.provision")
_HOUR_US = 3_600_000_000

Alert = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Due:
    kind: str  # deployment | domain
    subject_id: str
    wallet_id: str
    name: str
    amount: int
    reason: str
    failed_at_us: int
    grace_until_us: int
    suspended_at_us: int | None
    reclaim_at_us: int | None

    @property
    def state(self) -> str:
        return "grace" if self.suspended_at_us is None else "suspended"

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "provision_due",
            "state": self.state,
            **{f: getattr(self, f) for f in self.__slots__},
        }


def _due(r: Any) -> Due:
    return Due(
        r.kind, r.subject_id, r.wallet_id, r.name, r.amount, r.reason, r.failed_at_us, r.grace_until_us,
        r.suspended_at_us, r.reclaim_at_us,
    )  # fmt: skip


class Dues:
    def __init__(
        self, cfg: ProvisionConfig, engine: AsyncEngine, clock: Clock, audit: Audit, alert: Alert | None
    ) -> None:
        self.cfg, self.engine, self.clock, self.audit, self.alert = cfg, engine, clock, audit, alert

    async def all(self, wallet_id: str | None = None) -> list[Due]:
        q = select(U).order_by(U.c.kind, U.c.name)
        if wallet_id is not None:
            q = q.where(U.c.wallet_id == wallet_id)
        async with self.engine.connect() as conn:
            return [_due(r) for r in await conn.execute(q)]

    async def get(self, kind: str, subject_id: str) -> Due | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(U).where(U.c.kind == kind, U.c.subject_id == subject_id))).first()
        return None if r is None else _due(r)

    async def failed(
        self, kind: str, subject_id: str, wallet_id: str, name: str, amount: int, reason: str
    ) -> Due:
        """A recurring charge was refused: the grace period starts (once: the
        first failure's process alerts the owner); later failures update it."""
        now = self.clock.now_us()
        row = {
            "kind": kind, "subject_id": subject_id, "wallet_id": wallet_id, "name": name, "amount": amount,
            "reason": reason, "failed_at_us": now,
            "grace_until_us": now + int(self.cfg.grace_hours * _HOUR_US),
            "suspended_at_us": None, "reclaim_at_us": None, "updated_at_us": now,
        }  # fmt: skip
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(U), [row])
        except IntegrityError:  # already in grace (or suspended): the latest charge that failed
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    update(U)
                    .where(U.c.kind == kind, U.c.subject_id == subject_id)
                    .values(amount=amount, reason=reason, updated_at_us=now)
                )
        else:
            await self._tell(_due(_Row(row)), "payment_failed")
        due = await self.get(kind, subject_id)
        assert due is not None
        return due

    async def paid(self, kind: str, subject_id: str) -> Due | None:
        """A recurring charge succeeded: what was due is lifted (the row, if any, goes)."""
        due = await self.get(kind, subject_id)
        if due is None:
            return None
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                delete(U).where(
                    U.c.kind == kind, U.c.subject_id == subject_id, U.c.failed_at_us == due.failed_at_us
                )
            )
        if r.rowcount == 1:
            await self._tell(due, "payment_recovered")
            return due
        return None

    async def suspend_overdue(self) -> list[Due]:
        """Suspend what is still unpaid past its grace period (each once)."""
        now = self.clock.now_us()
        async with self.engine.connect() as conn:
            q = select(U).where(U.c.suspended_at_us.is_(None), U.c.grace_until_us <= now)
            rows = [_due(r) for r in await conn.execute(q)]
        out = []
        for d in rows:
            reclaim = now + int(self.cfg.reclaim_after_hours * _HOUR_US)
            async with writer(self.engine).begin() as conn:
                r = await conn.execute(
                    update(U)
                    .where(U.c.kind == d.kind, U.c.subject_id == d.subject_id, U.c.suspended_at_us.is_(None))
                    .values(suspended_at_us=now, reclaim_at_us=reclaim, updated_at_us=now)
                )
            if r.rowcount == 1:
                s = await self.get(d.kind, d.subject_id)
                assert s is not None
                await self._tell(s, "suspended")
                out.append(s)
        return out

    async def reclaimable(self) -> list[Due]:
        now = self.clock.now_us()
        async with self.engine.connect() as conn:
            q = select(U).where(U.c.reclaim_at_us.is_not(None), U.c.reclaim_at_us <= now)
            return [_due(r) for r in await conn.execute(q.order_by(U.c.kind, U.c.name))]

    async def reclaimed(self, due: Due) -> bool:
        """Forget a reclaimed subject; False if another process reclaimed it first."""
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                delete(U).where(
                    U.c.kind == due.kind,
                    U.c.subject_id == due.subject_id,
                    U.c.failed_at_us == due.failed_at_us,
                )
            )
        if r.rowcount == 1:
            await self._tell(due, "reclaimed")
            return True
        return False

    async def suspended(self) -> dict[str, set[str]]:
        """The suspended subjects' ids, by kind."""
        async with self.engine.connect() as conn:
            q = select(U.c.kind, U.c.subject_id).where(U.c.suspended_at_us.is_not(None))
            out: dict[str, set[str]] = {"deployment": set(), "domain": set()}
            for kind, sid in await conn.execute(q):
                out.setdefault(kind, set()).add(sid)
            return out

    async def _tell(self, due: Due, event: str) -> None:
        """The owner's alert (the wallet's webhook) and the wallet's audit row."""
        detail: dict[str, Any] = {
            "kind": due.kind, "id": due.subject_id, "name": due.name, "amount": due.amount,
            "reason": due.reason, "grace_until_us": due.grace_until_us, "reclaim_at_us": due.reclaim_at_us,
        }  # fmt: skip
        log.warning("provision %s: %s %s (%s)", event, due.kind, due.name, due.reason)
        await self.audit.write(
            [self.audit.row(due.wallet_id, f"provision_{event}", actor="billing", **detail)]
        )
        if self.alert is not None:
            self.alert({"type": f"provision.{event}", "wallet_id": due.wallet_id, **detail})


class _Row:
    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
