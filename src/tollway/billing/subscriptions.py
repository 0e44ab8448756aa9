"""Each customer's subscription: a plan, a status and its billing periods.

A customer with no row is on ``[billing] default_plan``, active, billed by
calendar month. Local subscriptions (no Stripe) are charged from the prepaid
balance at the start of each period; Stripe subscriptions are charged by
Stripe, and its webhooks set the status here (:meth:`Subscriptions.apply_stripe`).

Plan changes (docs/billing.md): an upgrade applies at once and charges the
price difference for the rest of the period, prorated by the second; the
period's included neurons and requests rise to the new plan's at once. A
downgrade waits for the end of the period (nothing is refunded). Either
way the next request sees the change: it reads the subscription with the
API key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.billing.periods import CALENDAR, add_months, period_at
from tollway.billing.plans import Plan
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError, conflict, invalid, not_found
from tollway.core.money import parse_price
from tollway.core.schema import customers as C
from tollway.core.schema import subscriptions as S
from tollway.core.storage import writer
from tollway.identity.keys import KeyJoin
from tollway.ledger import Ledger

STATUSES = ("trialing", "active", "past_due", "canceled")
LIVE = ("trialing", "active")  # statuses whose plan applies in full

# The subscription read with every API key, in its one point read
# (tollway.identity.keys): a plan change applies on the next request.
KEY_JOIN = KeyJoin(
    "s.plan, s.status, s.period_start_us, s.period_end_us, s.anchor_us, s.rev",
    "LEFT JOIN subscriptions s ON s.customer_id = k.customer_id",
)


@dataclass(frozen=True, slots=True)
class Subscription:
    customer_id: str
    plan: str
    status: str
    period_start_us: int
    period_end_us: int
    trial_end_us: int | None = None
    cancel_at_period_end: bool = False
    pending_plan: str | None = None
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    anchor_us: int = CALENDAR
    rev: int = 0
    stored: bool = False  # False: the default plan, no row yet

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "subscription",
            "customer_id": self.customer_id,
            "plan": self.plan,
            "status": self.status,
            "current_period_start_us": self.period_start_us,
            "current_period_end_us": self.period_end_us,
            "trial_end_us": self.trial_end_us,
            "cancel_at_period_end": self.cancel_at_period_end,
            "pending_plan": self.pending_plan,
            "stripe_customer_id": self.stripe_customer_id,
            "stripe_subscription_id": self.stripe_subscription_id,
        }


_COLS = (
    S.c.customer_id,
    S.c.plan,
    S.c.status,
    S.c.period_start_us,
    S.c.period_end_us,
    S.c.trial_end_us,
    S.c.cancel_at_period_end,
    S.c.pending_plan,
    S.c.stripe_customer_id,
    S.c.stripe_subscription_id,
    S.c.anchor_us,
    S.c.rev,
)


def _from_row(r: Any) -> Subscription:
    return Subscription(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10], r[11], True)


def proration(old_price: int, new_price: int, start_us: int, end_us: int, now_us: int) -> int:
    """What an upgrade costs for the rest of the period: the price difference
    times the share of the period left, rounded up to the micro-USD."""
    diff = new_price - old_price
    if diff <= 0 or now_us >= end_us:
        return 0
    left, length = end_us - max(now_us, start_us), end_us - start_us
    return -(-diff * left // length)


class Subscriptions:
    def __init__(
        self, engine: AsyncEngine, ledger: Ledger, clock: Clock, plans: dict[str, Plan], default_plan: str
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.plans = plans
        self.default_plan = default_plan

    def plan(self, key: str, param: str = "plan") -> Plan:
        p = self.plans.get(key)
        if p is None:
            raise invalid("plan_not_found", f"no plan {key!r}; plans: {', '.join(sorted(self.plans))}", param)
        return p

    def default(self, customer_id: str) -> Subscription:
        start, end = period_at(CALENDAR, self.clock.now_us())
        return Subscription(customer_id, self.default_plan, "active", start, end)

    async def get(self, customer_id: str) -> Subscription:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_COLS).where(S.c.customer_id == customer_id))).first()
            if r is None:
                found = (await conn.execute(select(C.c.id).where(C.c.id == customer_id))).first()
                if found is None:
                    raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
                return self.default(customer_id)
        return self.current(_from_row(r))

    def current(self, s: Subscription) -> Subscription:
        """``s`` with its period moved on to now, when the stored one has ended."""
        now = self.clock.now_us()
        if s.period_start_us <= now < s.period_end_us:
            return s
        start, end = period_at(s.anchor_us, now)
        return replace(s, period_start_us=start, period_end_us=end)

    async def customer_for_stripe(self, stripe_customer_id: str) -> str | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(
                    select(S.c.customer_id).where(S.c.stripe_customer_id == stripe_customer_id)
                )
            ).first()
        return None if r is None else str(r[0])

    # ------------------------------------------------------------------ writes

    async def _upsert(self, conn: AsyncConnection, customer_id: str, values: dict[str, Any]) -> None:
        """Write a row's values (creating it on the default plan first) and bump its rev."""
        now = self.clock.now_us()
        d = self.default(customer_id)
        row = {
            "customer_id": customer_id,
            "plan": d.plan,
            "status": d.status,
            "anchor_us": CALENDAR,
            "period_start_us": d.period_start_us,
            "period_end_us": d.period_end_us,
            "trial_end_us": None,
            "cancel_at_period_end": 0,
            "pending_plan": None,
            "rev": 1,
            "stripe_customer_id": None,
            "stripe_subscription_id": None,
            "created_at_us": now,
            "updated_at_us": now,
            **values,
        }
        dialect = conn.engine.dialect.name
        ins = (postgresql.insert(S) if dialect == "postgresql" else sqlite.insert(S)).values(row)
        changes = {k: v for k, v in values.items()} | {"updated_at_us": now, "rev": S.c.rev + 1}
        await conn.execute(ins.on_conflict_do_update(index_elements=[S.c.customer_id], set_=changes))

    async def touch(self, conn: AsyncConnection, customer_id: str) -> None:
        """Bump the customer's rev (a billing change the request path must see)."""
        await self._upsert(conn, customer_id, {})

    async def link_stripe_customer(self, customer_id: str, stripe_customer_id: str) -> None:
        async with writer(self.engine).begin() as conn:
            await self._customer_exists(conn, customer_id)
            await self._upsert(conn, customer_id, {"stripe_customer_id": stripe_customer_id})

    async def apply_stripe(
        self,
        customer_id: str,
        *,
        plan: str,
        status: str,
        period_start_us: int,
        period_end_us: int,
        trial_end_us: int | None,
        cancel_at_period_end: bool,
        stripe_subscription_id: str | None,
    ) -> Subscription:
        """Set the subscription from a Stripe subscription object (a webhook).
        A canceled one puts the customer back on the default plan."""
        self.plan(plan)
        if status not in STATUSES:
            raise invalid("invalid_status", f"status must be one of {', '.join(STATUSES)}", "status")
        values = {
            "plan": plan,
            "status": status,
            "anchor_us": period_start_us,
            "period_start_us": period_start_us,
            "period_end_us": period_end_us,
            "trial_end_us": trial_end_us,
            "cancel_at_period_end": int(cancel_at_period_end),
            "pending_plan": None,
            "stripe_subscription_id": stripe_subscription_id,
        }
        async with writer(self.engine).begin() as conn:
            await self._customer_exists(conn, customer_id)
            await self._upsert(conn, customer_id, values)
        return await self.get(customer_id)

    async def _customer_exists(self, conn: AsyncConnection, customer_id: str) -> None:
        if (await conn.execute(select(C.c.id).where(C.c.id == customer_id))).first() is None:
            raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")

    # ------------------------------------------------- local (no Stripe) billing

    async def subscribe(self, customer_id: str, plan_key: str) -> Subscription:
        """Start a plan now, or change to it: see the module's docstring. A
        charge the prepaid balance cannot cover is refused (402) and changes nothing."""
        new = self.plan(plan_key)
        cur = await self.get(customer_id)
        if cur.stripe_subscription_id:
            raise conflict(
                "managed_by_stripe",
                "billed by Stripe: change it with POST /v1/billing/checkout or the portal",
                "plan",
            )
        now = self.clock.now_us()
        old = self.plans.get(cur.plan)
        new_price = parse_price(new.price)
        old_price = parse_price(old.price) if old and cur.status in LIVE else 0
        if cur.status == "canceled" or not cur.stored or (old_price == 0 and new_price > 0):
            return await self._start(customer_id, new, now)
        if new.lookup_key == cur.plan:
            values: dict[str, Any] = {"pending_plan": None, "cancel_at_period_end": 0}
        elif new_price < old_price:
            values = {"pending_plan": new.lookup_key, "cancel_at_period_end": 0}
        else:
            due = proration(old_price, new_price, cur.period_start_us, cur.period_end_us, now)
            key = f"sub:{customer_id}:{cur.period_start_us}:{new.lookup_key}"
            await self._charge(customer_id, due, key, f"upgrade to {new.title}, prorated")
            values = {"plan": new.lookup_key, "pending_plan": None, "cancel_at_period_end": 0}
        async with writer(self.engine).begin() as conn:
            await self._upsert(conn, customer_id, values)
        return await self.get(customer_id)

    async def _start(self, customer_id: str, plan: Plan, now: int) -> Subscription:
        """A new subscription: a trial if the plan has one, else the first period charged."""
        trial_end = now + plan.trial_days * 86_400_000_000 if plan.trial_days else None
        if trial_end is None:
            await self._charge(customer_id, parse_price(plan.price), f"sub:{customer_id}:{now}", plan.title)
        values = {
            "plan": plan.lookup_key,
            "status": "trialing" if trial_end else "active",
            "anchor_us": trial_end or now,
            "period_start_us": now,
            "period_end_us": trial_end or add_months(now, 1),
            "trial_end_us": trial_end,
            "cancel_at_period_end": 0,
            "pending_plan": None,
        }
        async with writer(self.engine).begin() as conn:
            await self._customer_exists(conn, customer_id)
            await self._upsert(conn, customer_id, values)
        return await self.get(customer_id)

    async def cancel(self, customer_id: str, *, at_period_end: bool = True) -> Subscription:
        cur = await self.get(customer_id)
        if cur.stripe_subscription_id:
            raise conflict("managed_by_stripe", "cancel a Stripe subscription in the customer portal", None)
        values: dict[str, Any] = (
            {"cancel_at_period_end": 1}
            if at_period_end
            else {"status": "canceled", "cancel_at_period_end": 0}
        )
        async with writer(self.engine).begin() as conn:
            await self._customer_exists(conn, customer_id)
            await self._upsert(conn, customer_id, values)
        return await self.get(customer_id)

    async def renew_due(self) -> int:
        """Start the next period of every local subscription whose period has
        ended: apply a pending downgrade or cancellation, then charge the price
        (idempotently per period); a balance that cannot pay makes it past_due."""
        now = self.clock.now_us()
        async with self.engine.connect() as conn:
            rows = [
                _from_row(r)
                for r in await conn.execute(
                    select(*_COLS).where(
                        S.c.period_end_us <= now,
                        S.c.status != "canceled",
                        S.c.stripe_subscription_id.is_(None),
                    )
                )
            ]
        for s in rows:
            values: dict[str, Any]
            if s.cancel_at_period_end:
                values = {"status": "canceled", "cancel_at_period_end": 0}
            else:
                key = s.pending_plan or s.plan
                plan = self.plans.get(key) or self.plans[self.default_plan]
                start, end = period_at(s.anchor_us, now)
                status = "active"
                try:
                    await self._charge(
                        s.customer_id, parse_price(plan.price), f"sub:{s.customer_id}:{start}", plan.title
                    )
                except TollwayError as e:
                    if e.code != "insufficient_funds":
                        raise
                    status = "past_due"
                values = {
                    "plan": plan.lookup_key,
                    "pending_plan": None,
                    "status": status,
                    "period_start_us": start,
                    "period_end_us": end,
                }
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    update(S)
                    .where(S.c.customer_id == s.customer_id, S.c.rev == s.rev)
                    .values(**values, rev=S.c.rev + 1, updated_at_us=now)
                )
        return len(rows)

    async def _charge(self, customer_id: str, amount: int, idempotency_key: str, what: str) -> None:
        if amount <= 0:
            return
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(C.c.account_id).where(C.c.id == customer_id))).first()
        if r is None:
            raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
        try:
            await self.ledger.transfer(
                r[0],
                "sys_revenue",
                amount,
                description=f"subscription: {what}",
                idempotency_key=idempotency_key,
            )
        except TollwayError as e:
            if e.code == "insufficient_funds":
                raise TollwayError(
                    ErrorType.PAYMENT,
                    "insufficient_funds",
                    f"the prepaid balance cannot pay {amount} micro-USD for {what}; top it up first",
                    param="plan",
                    status=402,
                ) from None
            raise
