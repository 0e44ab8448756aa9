"""Approvals: an authorization above the wallet's approval threshold waits
for a human, who approves it (it is screened again and its hold reserved
then) or denies it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tollway.core.clock import Clock
from tollway.core.errors import conflict
from tollway.wallets.decision import Decision
from tollway.wallets.holds import Holds
from tollway.wallets.records import Records
from tollway.wallets.screening import screen
from tollway.wallets.store import Wallet, Wallets


@dataclass
class Approvals:
    records: Records
    holds: Holds
    wallets: Wallets
    clock: Clock
    hold_seconds: int
    floor: Callable[[Wallet, int], Awaitable[tuple[str | None, str]]] | None = None  # the autopilot's

    async def approve(self, auth_id: str, actor: str) -> Decision:
        d = await self.records.get(auth_id)
        if d.status != "pending_approval":
            raise conflict(
                "authorization_not_pending", f"authorization {auth_id} is {d.status}", "authorization_id"
            )
        if d.expires_at_us <= self.clock.now_us():
            await self.records.set_status(d, "declined", "approval_required", reason="approval_required")
            raise conflict(
                "approval_expired", f"authorization {auth_id} waited past its approval timeout", None
            )
        token = await self.wallets.token(d.token_id)
        wallet = await self.wallets.get(d.wallet_id)
        reason, message = screen(token, wallet, d, self.clock.now_us())
        if reason is None and self.floor is not None:
            reason, message = await self.floor(wallet, d.amount)
        if reason is None:
            reason, message = await self.holds.reserve(token, wallet, d, self.hold_seconds)
        if reason is not None:
            return await self.records.set_status(d, "declined", message, actor=actor, reason=reason)
        return await self.records.set_status(
            d, "approved", None, actor=actor, legs=d.legs, expires_at_us=d.expires_at_us
        )

    async def deny(self, auth_id: str, actor: str) -> Decision:
        d = await self.records.get(auth_id)
        if d.status != "pending_approval":
            raise conflict(
                "authorization_not_pending", f"authorization {auth_id} is {d.status}", "authorization_id"
            )
        return await self.records.set_status(
            d, "declined", "a human denied it", actor=actor, reason="approval_required"
        )
