"""Customers. Each has a prepaid ledger account created with it, atomically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock, SystemClock
from tollway.core.errors import invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import customers as C
from tollway.core.schema import ledger_accounts as A
from tollway.core.storage import writer
from tollway.identity.keys import get_limits, set_limits
from tollway.ledger.types import AccountKind, default_flags


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str
    email: str | None
    account_id: str
    created_at_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "customer",
            "name": self.name,
            "email": self.email,
            "account_id": self.account_id,
            "created_at_us": self.created_at_us,
        }


def _validate(name: str, email: str | None) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise invalid("invalid_name", "name must be 1-200 characters", "name")
    if email is not None and (not isinstance(email, str) or len(email) > 320 or "@" not in email.strip("@")):
        raise invalid("invalid_email", "email must look like name@host", "email")


_COLS = (C.c.id, C.c.name, C.c.email, C.c.account_id, C.c.created_at_us)


class Customers:
    def __init__(self, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()

    async def create(self, name: str, email: str | None = None, *, id: str | None = None) -> Customer:
        """``id``: a fixed id (a demo's known customer); a fresh one otherwise."""
        _validate(name, email)
        now = self.clock.now_us()
        cid = id or new_id("cus")
        aid = new_id("acct")
        kind = AccountKind.CUSTOMER
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                insert(A),
                [
                    {
                        "id": aid,
                        "kind": kind.value,
                        "flags": default_flags(kind),
                        "debits_pending": 0,
                        "debits_posted": 0,
                        "credits_pending": 0,
                        "credits_posted": 0,
                        "customer_id": cid,
                        "name": f"{name} prepaid",
                        "created_at_us": now,
                    }
                ],
            )
            row = {"id": cid, "name": name, "email": email, "account_id": aid, "created_at_us": now}
            await conn.execute(insert(C), [row])
        return Customer(cid, name, email, aid, now)

    async def get(self, customer_id: str) -> Customer:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_COLS).where(C.c.id == customer_id))).first()
        if r is None:
            raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
        return Customer(*r)

    async def get_limits(self, customer_id: str) -> dict[str, Any]:
        return await get_limits(self.engine, C, customer_id, "customer_not_found", "customer_id")

    async def set_limits(self, customer_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the customer's stored overrides (null removes one)."""
        return await set_limits(self.engine, C, customer_id, changes, "customer_not_found", "customer_id")

    async def list(self, *, limit: int = 100, after: str | None = None) -> list[Customer]:
        q = select(*_COLS).order_by(C.c.id).limit(limit)
        if after is not None:
            q = q.where(C.c.id > after)
        async with self.engine.connect() as conn:
            return [Customer(*r) for r in await conn.execute(q)]
