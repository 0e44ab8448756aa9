"""The authorizations' records (``wallet_authorizations``) and their audit
rows: read, record a decision, change its status. On SQLite (and on
PostgreSQL, with exact column types) a new decision and a capture's or
void's record ride with the next ledger batch: no transaction of their own."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, not_found
from tollway.core.schema import wallet_authorizations as A
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.riders import Statement
from tollway.wallets.audit import Audit
from tollway.wallets.decision import COLS, FIELDS, Decision, Row, from_row
from tollway.wallets.store import Wallets

_SQLITE_INSERT = (
    f"INSERT INTO wallet_authorizations ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})"
    " ON CONFLICT (idempotency_key) DO NOTHING"  # another process's decision stands (read back)
)
# What rides with the ledger's batches (the rows carry the column types).
_RIDE_INSERT: Statement[tuple[Any, ...]] = Statement(_SQLITE_INSERT, postgres=True)
_RIDE_FINISH: Statement[tuple[str, int, int, str]] = Statement(
    "UPDATE wallet_authorizations SET status = ?, captured = ?, updated_at_us = ?"
    " WHERE id = ? AND status = 'approved'",
    postgres=True,
)
_RECORDED = "SELECT 1 FROM wallet_authorizations WHERE id = ?"
_BY_KEY = f"SELECT {', '.join(COLS)} FROM wallet_authorizations WHERE idempotency_key = ?"


@dataclass
class Records:
    engine: AsyncEngine
    ledger: Ledger
    clock: Clock
    wallets: Wallets
    audit: Audit
    _recent: dict[str, Decision] = field(init=False, default_factory=dict)  # by idempotency key

    async def get(self, auth_id: str, token_id: str | None = None) -> Decision:
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(A).where(A.c.id == auth_id))).first()
        if r is None or (token_id is not None and r.token_id != token_id):
            raise not_found("authorization_not_found", f"no authorization {auth_id!r}", "authorization_id")
        return from_row(r)

    async def pending(self) -> list[Decision]:
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(A).where(A.c.status == "pending_approval").order_by(A.c.id))
            return [from_row(r) for r in rows]

    async def finish(
        self, d: Decision, status: str, captured: int, message: str | None, actor: str
    ) -> Decision:
        """Record what the ledger did: on SQLite the update rides with the next
        ledger batch (no commit of its own)."""
        now = self.clock.now_us()
        event = {"captured": "capture", "voided": "void", "expired": "expire"}[status]
        arow = self.audit.row(
            d.wallet_id,
            event,
            token_id=d.token_id,
            authorization_id=d.id,
            actor=actor,
            message=message,
            captured=captured,
        )
        if not self.ledger.ride(_RIDE_FINISH, [(status, captured, now, d.id)]):
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    update(A)
                    .where(A.c.id == d.id, A.c.status == "approved")
                    .values(status=status, captured=captured, updated_at_us=now)
                )
        await self.audit.write_resolution(arow)
        self._recent.pop(d.idempotency_key, None)
        return replace(d, status=status, captured=captured, updated_at_us=now, message=message or "")

    async def seen(self, key: str) -> Decision | None:
        d = self._recent.get(key)
        if d is not None:
            return d
        r = await self.wallets.reads.one(_BY_KEY, key)  # one point read, off SQLAlchemy's path
        return None if r is None else from_row(Row(*r))

    async def save(self, d: Decision, event: str) -> bool:
        """Record a new decision; True if another process had decided the same
        request first, whose decision ``d`` now holds (it adopted it)."""
        if len(self._recent) > 50_000:
            self._recent.clear()
        self._recent[d.idempotency_key] = d
        arow = self.audit.row(
            d.wallet_id,
            event,
            authorization_id=d.id,
            actor="agent",
            token_id=d.token_id,
            status=d.status,
            reason=d.reason,
            amount=d.amount,
            payee=d.payee,
            category=d.category,
        )
        if self.ledger.ride(_RIDE_INSERT, [d.row()]):
            await self.audit.write_if(arow, _RECORDED, d.id)
            await self.ledger.riders_committed()
            # Another process may have decided the same request first (its
            # row holds the key; ours was not inserted): its answer is ours.
            r = await self.wallets.reads.one(_BY_KEY, d.idempotency_key)
            if r is not None and r[0] != d.id:
                self._adopt(d, from_row(Row(*r)))
                return True
            return False
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(A), [dict(zip(COLS, d.row(), strict=True))])
        except IntegrityError:  # another process decided the same request first: its answer
            self._recent.pop(d.idempotency_key, None)
            seen = await self.seen(d.idempotency_key)
            if seen is None:
                raise
            self._adopt(d, seen)
            return True
        await self.audit.write([arow])
        return False

    def _adopt(self, d: Decision, seen: Decision) -> None:
        """Answer with the decision another process recorded for this key (the
        holds share their ledger transfers through the key: one reservation)."""
        for f in FIELDS:
            setattr(d, f, getattr(seen, f))
        self._recent[d.idempotency_key] = seen

    async def set_status(
        self,
        d: Decision,
        status: str,
        message: str | None,
        *,
        actor: str = "system",
        reason: str | None = None,
        **values: Any,
    ) -> Decision:
        now = self.clock.now_us()
        changes: dict[str, Any] = {"status": status, "reason": reason, "updated_at_us": now}
        if "legs" in values:
            changes["legs"] = json.dumps(values.pop("legs"), separators=(",", ":"))
        changes.update(values)
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(update(A).where(A.c.id == d.id, A.c.status == d.status).values(**changes))
        if not r.rowcount:
            raise conflict(
                "authorization_changed", f"authorization {d.id} changed meanwhile; read it again", None
            )
        event = {"captured": "capture", "voided": "void", "expired": "expire"}.get(status, status)
        await self.audit.write(
            [
                self.audit.row(
                    d.wallet_id,
                    event,
                    token_id=d.token_id,
                    authorization_id=d.id,
                    actor=actor,
                    message=message,
                    **{k: v for k, v in values.items() if k in ("captured",)},
                )
            ]
        )
        self._recent.pop(d.idempotency_key, None)
        out = await self.get(d.id)
        if message and status == "declined":
            out.message = message
        return out

    async def where(self, *conditions: Any) -> list[Decision]:
        """The decisions that match (e.g. a token's open ones, those past due)."""
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            return [from_row(r) for r in await conn.execute(select(A).where(*conditions))]
