"""The runaway-loop guard: an agent token paying too often (per payee) or too
fast (per minute) is frozen until a human unfreezes it. The windows are the
gateway's rate-limit windows (in memory, or shared through Redis): this is
the one place the wallets use them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tollway.core.clock import Clock
from tollway.core.ratelimit import Tally, Windows
from tollway.observe import metrics
from tollway.wallets.decision import Decision
from tollway.wallets.store import AgentToken, Wallet, Wallets

__all__ = ["Velocity", "Windows"]

log = logging.getLogger("tollway.wallets")


@dataclass(slots=True)
class Velocity:
    windows: Windows
    wallets: Wallets
    clock: Clock
    on_freeze: Callable[[dict[str, Any]], None] | None = None  # the alert (webhook) hook

    async def check(self, token: AgentToken, wallet: Wallet, d: Decision) -> tuple[str | None, str]:
        """Count the payment in the token's windows; past a limit, freeze the token."""
        v = wallet.policy.velocity
        tallies = []
        if v.max_payments_per_payee_per_minute:
            tallies += [Tally(f"wv:{token.id}:{p}", v.max_payments_per_payee_per_minute, 1) for p in d.payees]
        if v.max_spend_per_minute:
            tallies.append(Tally(f"ws:{token.id}", v.max_spend_per_minute, d.amount))
        if not tallies:
            return None, ""
        verdict = await self.windows.hit(tallies, self.clock.now_us() // 1_000_000)
        if verdict.allowed:
            return None, ""
        which = tallies[verdict.refused]
        why = (
            f"more than {which.limit} payments to {which.key.split(':', 2)[2]} in a minute"
            if which.key.startswith("wv:")
            else f"spending faster than {which.limit} micro-USD a minute"
        )
        await self.wallets.freeze(token.id, why)
        metrics.WALLET_FREEZES.inc()
        log.warning("agent token %s frozen by the runaway-loop guard: %s", token.id, why)
        if self.on_freeze is not None:
            self.on_freeze(
                {"type": "wallet.token_frozen", "wallet_id": wallet.id, "token_id": token.id, "reason": why}
            )
        return "velocity_limit", f"runaway-loop guard: {why}; the token is frozen until a human unfreezes it"
