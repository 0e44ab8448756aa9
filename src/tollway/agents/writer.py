"""One writer per session: turns to a session apply one at a time, in the
order they arrived.

Within a process an :class:`asyncio.Lock` per session (FIFO: waiters are
woken in the order they queued). On PostgreSQL, the holder also takes a
session-level advisory lock keyed by a hash of (agent, session) on a
connection of its own, so turns from other processes and hosts queue too; a
process that dies drops its connection, and the lock with it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def lock_key(agent: str, session_id: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``."""
    digest = hashlib.blake2b(f"tollway-agent\0{agent}\0{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Writers:
    """``max_held``: how many sessions' advisory locks this process holds at
    once (each on a pooled connection, while the turn needs others): at most
    half the pool, so turns never wait on each other for connections."""

    def __init__(self, engine: AsyncEngine, max_held: int = 10) -> None:
        self.engine = engine
        self.distributed = engine.dialect.name == "postgresql"
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._held = asyncio.Semaphore(max_held)

    def queued(self, agent: str, session_id: str) -> int:
        """Turns holding or waiting for the session here (0 if none)."""
        entry = self._locks.get((agent, session_id))
        return 0 if entry is None else entry[1]

    @asynccontextmanager
    async def hold(self, agent: str, session_id: str) -> AsyncIterator[None]:
        key = (agent, session_id)
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                if not self.distributed:
                    yield
                    return
                async with self._held, self.engine.connect() as conn:
                    k = lock_key(agent, session_id)
                    await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": k})
                    await conn.commit()
                    try:
                        yield
                    finally:
                        try:
                            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
                            await conn.commit()
                        except BaseException:
                            # A pooled connection keeps its session locks: drop it instead.
                            await conn.invalidate()
                            raise
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
