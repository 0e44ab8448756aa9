"""Prepaid credit grants, like Lago's wallets and Stripe's credit grants.

Each grant is a ledger account (kind ``credit``) funded when it is made:
from ``sys_funding`` for a paid top-up, from ``sys_grants`` for a promotional
grant. The charge path draws grants before the prepaid balance, lowest
``priority`` first, then soonest to expire. When a grant expires, what is
left goes back where it came from (:meth:`Credits.expire_due`), in one
ledger transfer keyed by the grant, so it happens once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.billing.subscriptions import Subscriptions
from tollway.core.clock import Clock
from tollway.core.errors import conflict, invalid
from tollway.core.ids import new_id
from tollway.core.money import parse_amount
from tollway.core.schema import credit_grants as G
from tollway.core.storage import writer
from tollway.ledger import Ledger

_SOURCE = {"paid": "sys_funding", "promotional": "sys_grants"}


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    customer_id: str
    account_id: str
    amount: int
    priority: int
    category: str
    name: str
    expires_at_us: int | None
    expired_at_us: int | None
    created_at_us: int

    def to_dict(self, remaining: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "object": "credit_grant",
            "id": self.id,
            "customer_id": self.customer_id,
            "account_id": self.account_id,
            "amount": self.amount,
            "priority": self.priority,
            "category": self.category,
            "name": self.name,
            "expires_at_us": self.expires_at_us,
            "expired": self.expired_at_us is not None,
            "created_at_us": self.created_at_us,
        }
        if remaining is not None:
            d["remaining"] = remaining
        return d


_COLS = (
    G.c.id,
    G.c.customer_id,
    G.c.account_id,
    G.c.amount,
    G.c.priority,
    G.c.category,
    G.c.name,
    G.c.expires_at_us,
    G.c.expired_at_us,
    G.c.created_at_us,
)


def _grant(r: Any) -> Grant:
    return Grant(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


class Credits:
    def __init__(
        self, engine: AsyncEngine, ledger: Ledger, clock: Clock, subscriptions: Subscriptions
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.subscriptions = subscriptions

    async def grant(
        self,
        customer_id: str,
        amount: object,
        *,
        category: str = "promotional",
        priority: int = 50,
        name: str = "",
        expires_at_us: int | None = None,
        idempotency_key: str | None = None,
    ) -> Grant:
        """Fund a new grant; with ``idempotency_key``, a repeat returns the first grant."""
        micros = parse_amount(amount)
        if category not in _SOURCE:
            raise invalid("invalid_category", "category is 'paid' or 'promotional'", "category")
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise invalid(
                "invalid_priority", "priority is an integer from 0 (drawn first) to 100", "priority"
            )
        if not isinstance(name, str) or len(name) > 200:
            raise invalid("invalid_name", "name is at most 200 characters", "name")
        now = self.clock.now_us()
        if expires_at_us is not None and (not isinstance(expires_at_us, int) or expires_at_us <= now):
            raise invalid("invalid_expiry", "expires_at_us must be a time in the future", "expires_at_us")
        if idempotency_key is not None:
            found = await self._by_key(idempotency_key)
            if found is not None:
                if (found.customer_id, found.amount, found.category) != (customer_id, micros, category):
                    raise conflict(
                        "idempotency_conflict", "this idempotency key was used for a different grant", None
                    )
                return found
        await self.subscriptions.get(customer_id)  # 404 for an unknown customer
        gid = new_id("grant")
        acct = await self.ledger.create_account(
            "credit", id=f"credit_{gid}", customer_id=customer_id, name=name or f"{category} credit"
        )
        await self.ledger.transfer(
            _SOURCE[category],
            acct.id,
            micros,
            description=f"credit grant {gid}",
            idempotency_key=f"grant:{gid}",
        )
        row = {
            "id": gid,
            "customer_id": customer_id,
            "account_id": acct.id,
            "amount": micros,
            "priority": priority,
            "category": category,
            "name": name,
            "expires_at_us": expires_at_us,
            "expired_at_us": None,
            "idempotency_key": idempotency_key,
            "created_at_us": now,
        }
        async with writer(self.engine).begin() as conn:
            await conn.execute(insert(G), [row])
            await self.subscriptions.touch(conn, customer_id)
        return Grant(gid, customer_id, acct.id, micros, priority, category, name, expires_at_us, None, now)

    async def _by_key(self, key: str) -> Grant | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_COLS).where(G.c.idempotency_key == key))).first()
        return None if r is None else _grant(r)

    async def list(self, customer_id: str, *, live_only: bool = False) -> list[Grant]:
        q = select(*_COLS).where(G.c.customer_id == customer_id)
        if live_only:
            q = q.where(G.c.expired_at_us.is_(None))
        async with self.engine.connect() as conn:
            grants = [_grant(r) for r in await conn.execute(q)]
        return sorted(grants, key=lambda g: (g.priority, g.expires_at_us or 2**62, g.created_at_us))

    async def expire_due(self) -> int:
        """Take back what is left of every grant past its expiry; returns how many expired."""
        now = self.clock.now_us()
        async with self.engine.connect() as conn:
            due = [
                _grant(r)
                for r in await conn.execute(
                    select(*_COLS).where(G.c.expired_at_us.is_(None), G.c.expires_at_us <= now)
                )
            ]
        for g in due:
            left = (await self.ledger.get_account(g.account_id)).available
            if left > 0:
                await self.ledger.transfer(
                    g.account_id,
                    _SOURCE[g.category],
                    left,
                    description=f"credit grant {g.id} expired",
                    idempotency_key=f"grant-expiry:{g.id}",
                )
            async with writer(self.engine).begin() as conn:
                await conn.execute(update(G).where(G.c.id == g.id).values(expired_at_us=now))
                await self.subscriptions.touch(conn, g.customer_id)
        return len(due)
