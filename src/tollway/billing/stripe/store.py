"""Tollway's own Stripe tables: the ids ``sync`` and checkout made
(``stripe_objects``), webhook events seen (``stripe_events``) and small
durable state such as the meter push cursor (``billing_state``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import billing_state as B
from tollway.core.schema import stripe_events as E
from tollway.core.schema import stripe_objects as O
from tollway.core.storage import writer

# stripe_objects kinds
PRODUCT = "product"
PRICE = "price"
METER = "meter"
FEATURE = "feature"
CUSTOMER = "customer"

PROCESSING = "processing"  # a webhook event being handled (stripe_events.outcome)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    return (postgresql.insert if conn.engine.dialect.name == "postgresql" else sqlite.insert)(table)


class StripeStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    # ----------------------------------------------------------- objects

    async def get(self, kind: str, local_id: str) -> str | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(select(O.c.stripe_id).where(O.c.kind == kind, O.c.local_id == local_id))
            ).first()
        return None if r is None else str(r[0])

    async def all(self, kind: str) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(O.c.local_id, O.c.stripe_id).where(O.c.kind == kind))
            return {str(a): str(b) for a, b in rows}

    async def local_for(self, kind: str, stripe_id: str) -> str | None:
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(select(O.c.local_id).where(O.c.kind == kind, O.c.stripe_id == stripe_id))
            ).first()
        return None if r is None else str(r[0])

    async def put(self, kind: str, local_id: str, stripe_id: str) -> None:
        """Record (or replace) the Stripe id of a local object."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            ins = _insert(conn, O).values(
                kind=kind, local_id=local_id, stripe_id=stripe_id, updated_at_us=now
            )
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[O.c.kind, O.c.local_id],
                    set_={"stripe_id": stripe_id, "updated_at_us": now},
                )
            )

    async def put_once(self, kind: str, local_id: str, stripe_id: str) -> str:
        """Record the Stripe id unless one is already there; return the one that stands."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            ins = _insert(conn, O).values(
                kind=kind, local_id=local_id, stripe_id=stripe_id, updated_at_us=now
            )
            await conn.execute(ins.on_conflict_do_nothing(index_elements=[O.c.kind, O.c.local_id]))
            r = (
                await conn.execute(select(O.c.stripe_id).where(O.c.kind == kind, O.c.local_id == local_id))
            ).one()
        return str(r[0])

    # ------------------------------------------------------------ events

    async def claim_event(self, event_id: str, type: str, stale_after_us: int) -> str:
        """Take a webhook event for processing, once across every process:
        ``"claimed"``; ``"done"`` (processed before, its outcome stands); or
        ``"busy"`` (another delivery is processing it now). A claim older than
        ``stale_after_us`` is taken over (its process died)."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            ins = (
                _insert(conn, E)
                .values(id=event_id, type=type, received_at_us=now, outcome=PROCESSING)
                .on_conflict_do_nothing(index_elements=[E.c.id])
                .returning(E.c.id)
            )
            if (await conn.execute(ins)).first() is not None:
                return "claimed"
            taken = await conn.execute(
                update(E)
                .where(
                    E.c.id == event_id, E.c.outcome == PROCESSING, E.c.received_at_us < now - stale_after_us
                )
                .values(received_at_us=now)
                .returning(E.c.id)
            )
            if taken.first() is not None:
                return "claimed"
            r = (await conn.execute(select(E.c.outcome).where(E.c.id == event_id))).first()
        if r is None:  # released between the insert and the read: try again
            return await self.claim_event(event_id, type, stale_after_us)
        return "busy" if r[0] == PROCESSING else "done"

    async def event_outcome(self, event_id: str) -> str | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(E.c.outcome).where(E.c.id == event_id))).first()
        return None if r is None else str(r[0])

    async def finish_event(self, event_id: str, outcome: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(update(E).where(E.c.id == event_id).values(outcome=outcome[:500]))

    async def release_event(self, event_id: str) -> None:
        """Give a claim back (processing failed): the next delivery processes it."""
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(E).where(E.c.id == event_id, E.c.outcome == PROCESSING))

    # ------------------------------------------------------------- state

    async def state(self, name: str) -> str | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(B.c.value).where(B.c.name == name))).first()
        return None if r is None else str(r[0])

    async def set_state(self, name: str, value: str, *, lease: tuple[str, str] | None = None) -> bool:
        """Write a state value; with ``lease=(name, owner)``, only while ``owner``
        holds that lease (in the same transaction). Returns whether it was written."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            if lease is not None:
                held = await conn.execute(select(B.c.name).where(B.c.name == lease[0], B.c.value == lease[1]))
                if held.first() is None:
                    return False
            ins = _insert(conn, B).values(name=name, value=value, updated_at_us=now)
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[B.c.name], set_={"value": value, "updated_at_us": now}
                )
            )
        return True

    async def acquire_lease(self, name: str, owner: str, ttl_us: int) -> bool:
        """Hold (or renew) a lease: one owner at a time across processes; a
        lease not renewed within ``ttl_us`` passes to whoever asks next."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            ins = (
                _insert(conn, B)
                .values(name=name, value=owner, updated_at_us=now)
                .on_conflict_do_nothing(index_elements=[B.c.name])
                .returning(B.c.name)
            )
            if (await conn.execute(ins)).first() is not None:
                return True
            r = await conn.execute(
                update(B)
                .where(
                    B.c.name == name,
                    or_(B.c.value == owner, and_(B.c.value != owner, B.c.updated_at_us < now - ttl_us)),
                )
                .values(value=owner, updated_at_us=now)
                .returning(B.c.name)
            )
            return r.first() is not None

    async def release_lease(self, name: str, owner: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(B).where(B.c.name == name, B.c.value == owner))
