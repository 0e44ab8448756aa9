"""Served-but-uncharged work, recovered: long calls checkpoint what they have
produced, and a process that died mid-call has it charged on recovery.

A call that reports its charge only at the end (a streamed chat completion
sends tokens before its last chunk) can die with work delivered and nothing
charged: its reservation just expires. So a hold whose caller can say what
the work so far costs (:attr:`Hold.progress`) is checkpointed: every
``interval`` seconds, each live hold older than that writes its progress
(the legs it reserved, the amount and usage so far) to ``charge_progress``.
Short calls are never checkpointed and cost nothing extra.

:meth:`Recovery.recover` (at start-up, then on every tick) settles the holds
of rows no live process updated for ``3 * interval``: their legs are still
pending, so the checkpointed amount is posted and the rest released, with
the usage event, exactly as the caller would have settled them. A pending
transfer resolves once (a unique index), so a recovered hold is never also
settled by its caller, and a hold already settled or expired is just
forgotten. What a call produced after its last checkpoint stays uncharged;
a call shorter than ``interval`` stays uncharged (docs/ledger.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.charge.hold import Cap, Charger, Hold, Leg, Payer, Source
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.core.schema import charge_progress as T
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.types import TransferKind

log = logging.getLogger("tollway.charge")


def _leg(leg: Leg) -> list[Any]:
    s = leg.source
    if isinstance(s, Cap):
        return [leg.pending.id, "cap", s.units]
    return [leg.pending.id, "source", bool(s.unbounded)]


class Recovery:
    def __init__(
        self, engine: AsyncEngine, ledger: Ledger, charger: Charger, clock: Clock, interval_s: float
    ) -> None:
        self.engine, self.ledger, self.charger, self.clock = engine, ledger, charger, clock
        self.interval_s = interval_s
        self._written: set[str] = set()  # holds with a row (deleted once they settle)

    # ------------------------------------------------------------ checkpoints

    def _due(self, now: float) -> list[Hold]:
        return [
            h
            for h in list(self.charger.live.values())
            if h.progress is not None and h.legs and now - h.reserved_at >= self.interval_s
        ]

    async def checkpoint(self) -> int:
        """Write the progress of every live hold older than the interval; forget
        the rows of holds that settled since. Returns the rows written."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = []
        for h in self._due(now):
            try:
                amount, quantity, metadata = h.progress()  # type: ignore[misc]
            except Exception:  # a progress function must never break the checkpoint
                log.exception("hold %s: progress failed", h.hold_id)
                continue
            rows.append(
                {
                    "hold_id": h.hold_id,
                    "legs": json.dumps([_leg(lg) for lg in h.legs]),
                    "customer_id": h.payer.customer_id,
                    "meter": h.meter,
                    "max_amount": h.max_amount,
                    "amount": min(max(int(amount), 0), h.max_amount),
                    "quantity": int(quantity),
                    "metadata": json.dumps(metadata, default=str),
                    "idempotency_key": h.idempotency_key,
                    "updated_at_us": self.clock.now_us(),
                }
            )
        live = {h.hold_id for h in self.charger.live.values()}
        gone = [k for k in self._written if k not in live]
        if not rows and not gone:
            return 0
        async with writer(self.engine).begin() as conn:
            if rows:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                ins = dialect.insert(T).values(rows)
                cols = ("amount", "quantity", "metadata", "updated_at_us")
                await conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[T.c.hold_id], set_={c: ins.excluded[c] for c in cols}
                    )
                )
            if gone:
                await conn.execute(sa.delete(T).where(T.c.hold_id.in_(gone)))
        self._written.difference_update(gone)
        self._written.update(str(r["hold_id"]) for r in rows)
        return len(rows)

    # --------------------------------------------------------------- recovery

    async def recover(self, *, stale_s: float | None = None) -> int:
        """Settle the holds of rows nobody updated for ``stale_s`` (3 intervals
        by default): their process died mid-call. Returns the holds settled."""
        stale = self.clock.now_us() - int((3 * self.interval_s if stale_s is None else stale_s) * 1e6)
        live = {h.hold_id for h in self.charger.live.values()}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(T).where(T.c.updated_at_us < stale))).mappings().all()
        done: list[str] = []
        settled = 0
        for r in rows:
            if r["hold_id"] in live:  # this process is still serving it
                continue
            try:
                if await self._settle(r):
                    settled += 1
            except TollwayError as e:  # resolved meanwhile (settled, voided, expired): nothing to do
                log.info("hold %s not recovered: %s", r["hold_id"], e.code)
            done.append(r["hold_id"])
        if done:
            async with writer(self.engine).begin() as conn:
                await conn.execute(sa.delete(T).where(T.c.hold_id.in_(done)))
        return settled

    async def _settle(self, r: Any) -> bool:
        legs: list[Leg] = []
        sources: list[Source] = []
        caps: list[Cap] = []
        for pending_id, kind, extra in json.loads(r["legs"]):
            t = await self.ledger.get_transfer(pending_id)
            if t.kind != TransferKind.PENDING or await self.ledger.resolution_of(pending_id) is not None:
                return False  # already settled or expired
            src: Source | Cap
            if kind == "cap":
                src = Cap(t.debit_account_id, "recovered", units=extra)
                caps.append(src)
            else:
                src = Source(t.debit_account_id, unbounded=bool(extra))
                sources.append(src)
            legs.append(Leg(src, t))
        if not legs:
            return False
        hold = Hold.attach(
            self.ledger,
            Payer(sources[0].account_id, r["customer_id"], tuple(sources), tuple(caps)),
            int(r["max_amount"]),
            legs,
            meter=r["meter"],
            payee="",  # a settle posts each leg to its pending transfer's own payee
            idempotency_key=r["idempotency_key"],
        )
        metadata = {**json.loads(r["metadata"]), "recovered": True}
        await hold.settle(int(r["amount"]), quantity=int(r["quantity"]), **metadata)
        log.warning(
            "hold %s: recovered %d micro-USD of a call its process did not settle", r["hold_id"], r["amount"]
        )
        return True

    # ------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Recover what a previous process left, then checkpoint and recover every interval."""
        while True:
            try:
                await self.recover()
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("charge recovery tick failed")
            await asyncio.sleep(self.interval_s)
