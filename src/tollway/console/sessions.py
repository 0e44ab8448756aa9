"""Console sessions: a random id in the cookie, its SHA-256 in the database
with the role, the customer and the API key it signed in with.

A customer's session is checked against its key on every request: a key
revoked (or deleted) ends the session at once. Signing out deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import api_keys as K
from tollway.core.schema import console_sessions as S
from tollway.core.storage import writer

OPERATOR = "operator"
CUSTOMER = "customer"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is signed in: the operator (every customer) or one customer."""

    role: str
    customer_id: str | None
    csrf: str

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    def __init__(self, engine: AsyncEngine, clock: Clock, hours: float) -> None:
        self.engine = engine
        self.clock = clock
        self.ttl_us = int(hours * 3_600_000_000)

    async def create(self, role: str, customer_id: str | None = None, key_id: str | None = None) -> str:
        """A new session; returns the id for the cookie (stored only as its hash)."""
        sid = secrets.token_urlsafe(32)
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(S).where(S.c.expires_at_us <= now))  # the expired ones go
            await conn.execute(
                insert(S).values(
                    id_hash=_hash(sid),
                    role=role,
                    customer_id=customer_id,
                    key_id=key_id,
                    csrf=secrets.token_urlsafe(32),
                    created_at_us=now,
                    expires_at_us=now + self.ttl_us,
                )
            )
        return sid

    async def load(self, sid: str | None) -> Viewer | None:
        """The live session of this cookie, or None (unknown, expired, or its key revoked)."""
        if not sid or len(sid) > 100:
            return None
        q = (
            select(
                S.c.role, S.c.customer_id, S.c.csrf, S.c.expires_at_us, S.c.key_id, K.c.revoked_at_us, K.c.id
            )
            .select_from(S.outerjoin(K, K.c.id == S.c.key_id))
            .where(S.c.id_hash == _hash(sid))
        )
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        if r is None:
            return None
        role, customer_id, csrf, expires, key_id, revoked, found = r
        if expires <= self.clock.now_us():
            return None
        if role != OPERATOR and (key_id is None or found is None or revoked is not None):
            await self.end(sid)  # the key it signed in with was revoked: the session ends
            return None
        return Viewer(role, customer_id, csrf)

    async def end(self, sid: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(S).where(S.c.id_hash == _hash(sid)))
