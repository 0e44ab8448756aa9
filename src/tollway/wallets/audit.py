"""The wallet audit trail: every authorization, decision, capture, void,
approval, freeze and change is a row, queryable per wallet and per token."""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.ids import new_id
from tollway.core.schema import wallet_audit as W
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.riders import Statement

_COLS = [c.name for c in W.columns]
_INSERT: Statement[tuple[Any, ...]] = Statement(
    f"INSERT INTO wallet_audit ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})", postgres=True
)
# An authorization's resolution (capture, void, expiry) is audited once: a replay
# of it (say, a capture re-sent to another process) finds the row and adds none.
RESOLUTIONS = ("capture", "void", "expire")
# One row as a SELECT (created_at_us, the last column, cast: PostgreSQL types
# a SELECT's parameters from the context, and this one has none).
_SELECTED = (
    f"INSERT INTO wallet_audit ({', '.join(_COLS)}) SELECT {', '.join(['?'] * (len(_COLS) - 1))},"
    " CAST(? AS BIGINT)"
)
_ONCE: Statement[tuple[Any, ...]] = Statement(
    f"{_SELECTED} WHERE NOT EXISTS (SELECT 1 FROM wallet_audit WHERE authorization_id = ?"
    f" AND event IN ({', '.join(repr(e) for e in RESOLUTIONS)}))",
    postgres=True,
)


@functools.cache
def _if_exists(exists: str) -> Statement[tuple[Any, ...]]:
    return Statement(f"{_SELECTED} WHERE EXISTS ({exists})", postgres=True)


class Audit:
    def __init__(self, engine: AsyncEngine, ledger: Ledger, clock: Clock) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock

    def row(
        self,
        wallet_id: str,
        event: str,
        *,
        token_id: str | None = None,
        authorization_id: str | None = None,
        actor: str = "system",
        **detail: Any,
    ) -> tuple[Any, ...]:
        return (
            new_id("aud"),
            wallet_id,
            token_id,
            authorization_id,
            event,
            actor,
            json.dumps(detail, separators=(",", ":"), default=str),
            self.clock.now_us(),
        )

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        """On SQLite the rows ride with the ledger's next batch (no commit of their
        own); elsewhere they are inserted in a transaction of their own."""
        if not rows or self.ledger.ride(_INSERT, rows):
            return
        async with writer(self.engine).begin() as conn:
            await conn.execute(insert(W), [dict(zip(_COLS, r, strict=True)) for r in rows])

    async def write_if(self, row: tuple[Any, ...], exists: str, *args: Any) -> None:
        """Write ``row`` (riding, where rows ride) only if the query ``exists``
        (``?`` placeholders, ``args``) finds a row in the same transaction."""
        if self.ledger.ride(_if_exists(exists), [(*row, *args)]):
            return
        await self.write([row])

    async def write_resolution(self, row: tuple[Any, ...]) -> None:
        """Audit an authorization's resolution once, however often it is replayed.
        It rides after the authorization's own update in one transaction: on
        PostgreSQL a concurrent replay's update waits for that row's lock, so its
        check runs once the first resolution (and its audit row) committed."""
        auth_id = row[_COLS.index("authorization_id")]
        if self.ledger.ride(_ONCE, [(*row, auth_id)]):
            return
        async with writer(self.engine).begin() as conn:  # an in-memory SQLite: one process
            q = select(W.c.id).where(W.c.authorization_id == auth_id, W.c.event.in_(RESOLUTIONS))
            if (await conn.execute(q.limit(1))).first() is None:
                await conn.execute(insert(W), [dict(zip(_COLS, row, strict=True))])

    async def query(
        self,
        *,
        wallet_id: str | None = None,
        token_id: str | None = None,
        authorization_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        await self.ledger.riders_committed()
        q = select(W).order_by(W.c.id.desc()).limit(limit)
        if wallet_id is not None:
            q = q.where(W.c.wallet_id == wallet_id)
        if token_id is not None:
            q = q.where(W.c.token_id == token_id)
        if authorization_id is not None:
            q = q.where(W.c.authorization_id == authorization_id)
        if before is not None:
            q = q.where(W.c.id < before)
        async with self.engine.connect() as conn:
            return [
                {
                    "object": "wallet_audit_event",
                    "id": r.id,
                    "wallet_id": r.wallet_id,
                    "token_id": r.token_id,
                    "authorization_id": r.authorization_id,
                    "event": r.event,
                    "actor": r.actor,
                    "detail": json.loads(r.detail),
                    "created_at_us": r.created_at_us,
                }
                for r in await conn.execute(q)
            ]
