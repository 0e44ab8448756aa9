"""The sweep: approvals left waiting past their timeout are declined, and
authorizations past their hold's time are closed from what the ledger did
(captured, expired, or still held: released now)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.core.schema import wallet_authorizations as A
from tollway.ledger import Ledger, TransferKind
from tollway.wallets.decision import Decision
from tollway.wallets.holds import Holds
from tollway.wallets.records import Records

log = logging.getLogger("tollway.wallets")


@dataclass
class Sweep:
    ledger: Ledger
    clock: Clock
    records: Records
    holds: Holds

    async def sweep(self) -> int:
        """Decline approvals left waiting past their timeout, and close
        authorizations past their hold's time from what the ledger did: captured
        (a record a crash left behind), expired, or still held (released now)."""
        now = self.clock.now_us()
        rows = await self.records.where(
            A.c.status.in_(("pending_approval", "approved")), A.c.expires_at_us <= now
        )
        for d in rows:
            if d.id in self.holds.resolving:
                continue
            try:
                if d.status == "pending_approval":
                    await self.records.set_status(
                        d, "declined", "nobody approved it in time", reason="approval_required"
                    )
                else:
                    await self._expire(d)
            except TollwayError as e:  # another process got there first
                if e.code not in ("authorization_not_open", "authorization_changed"):
                    raise
        return len(rows)

    async def _expire(self, d: Decision) -> None:
        if not d.legs:  # nothing was ever held
            await self.records.finish(d, "expired", 0, "the hold expired before it was captured", "system")
            return
        r = await self.ledger.resolution_of(d.legs[0][0])
        if r is None:  # still held: release it
            try:
                await self.holds.resolve(d, None, "system", voided="expired")
            except TollwayError as e:
                if e.code != "authorization_expired":
                    raise
            return
        if r.kind == TransferKind.POST_PENDING:  # captured, and the record was lost with its process
            await self.records.finish(d, "captured", r.amount, "recovered from the ledger", "system")
        else:
            await self.records.finish(d, "expired", 0, "the hold expired before it was captured", "system")

    async def run(self, interval_s: float) -> None:
        """:meth:`sweep` forever (in the server's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)  # not at start-up: a short-lived process has nothing due
            try:
                await self.sweep()
            except Exception:
                log.exception("wallet sweep failed; retrying in %ss", interval_s)
