"""Authorizations: an agent token asks to spend; the answer is approved (with
a ledger hold), declined (with a reason code) or pending a human's approval.
The hold is later captured (all or part) or voided.

The decision is made in process, in this order, and every step is exact:

1. the token (revoked, expired, frozen, a single-use token already used);
2. the category, the payee, the per-payment limits (the token's and the
   policy's ``per_authorization`` limits);
3. the approval threshold: above it, the request waits for a human;
4. the runaway-loop guard (velocity over the last minute, shared through
   Redis when the gateway has it): tripping it freezes the token;
5. the ledger reservation, which holds the amount on the wallet's account
   *and* on every limit that applies, in one batch: each spending limit
   (daily, weekly, monthly, yearly, all-time; per category when it says so),
   the per-provider monthly cap and the token's total allowance are
   ``budget`` accounts funded with the limit, so no interleaving of
   concurrent authorizations, in any number of processes, can overspend.

:class:`Authorizer` is the face's one entry point; the concepts live in
their own modules: ``decision`` (the record), ``screening`` (steps 1-2),
``velocity`` (step 4), ``caps`` (the limits of step 5, as
:mod:`tollway.charge.limits`), ``holds`` (reserve, capture, void),
``records`` (storage), ``approvals`` (step 3's humans), ``sweep`` (expiry)
and ``alerts`` (the webhook).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.charge import Charger
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, conflict, forbidden, invalid
from tollway.core.ids import new_id
from tollway.core.ratelimit import Windows
from tollway.core.schema import wallet_authorizations as A
from tollway.ledger import Ledger, TransferKind
from tollway.observe import tracing
from tollway.wallets.alerts import alerts
from tollway.wallets.approvals import Approvals
from tollway.wallets.audit import Audit
from tollway.wallets.autopilot import Autopilot
from tollway.wallets.caps import WalletCaps
from tollway.wallets.decision import PAY_TO, REASONS, Decision, pay_to_memo, request_hash
from tollway.wallets.holds import PAID_OUT, Holds
from tollway.wallets.policy import TokenLimits
from tollway.wallets.records import Records
from tollway.wallets.screening import category_refused, check_request, dead_token, screen, token_state
from tollway.wallets.store import AgentToken, Wallet, Wallets
from tollway.wallets.sweep import Sweep
from tollway.wallets.velocity import Velocity

__all__ = ["PAID_OUT", "REASONS", "Authorizer", "Decision", "alerts", "pay_to_memo", "token_state"]

RECURRING = "sys_recurring"  # the token id on the platform's recurring charges (hosting, renewals)


def standing_token(wallet: Wallet) -> AgentToken:
    """The stand-in for the agent on a charge the platform makes for the wallet:
    no token limits of its own; the wallet's policy still applies."""
    return AgentToken(RECURRING, wallet.id, "", "recurring charges", TokenLimits(), 0, None, None, None, None)


@dataclass
class Authorizer:
    engine: AsyncEngine
    ledger: Ledger
    charger: Charger
    clock: Clock
    wallets: Wallets
    audit: Audit
    windows: Windows
    hold_seconds: int = 600
    on_freeze: Callable[[dict[str, Any]], None] | None = None  # the alert (webhook) hook
    records: Records = field(init=False)
    caps: WalletCaps = field(init=False)
    holds: Holds = field(init=False)
    velocity: Velocity = field(init=False)
    approvals: Approvals = field(init=False)
    sweeper: Sweep = field(init=False)
    autopilot: Autopilot = field(init=False)  # its floor is checked at screening
    _inflight: dict[str, asyncio.Future[None]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.records = Records(self.engine, self.ledger, self.clock, self.wallets, self.audit)
        self.caps = WalletCaps(self.ledger, self.clock)
        self.holds = Holds(self.ledger, self.charger, self.clock, self.wallets, self.caps, self.records)
        self.velocity = Velocity(self.windows, self.wallets, self.clock, self.on_freeze)
        self.autopilot = Autopilot(self.engine, self.ledger, self.clock, self.wallets, self.audit)
        self.approvals = Approvals(
            self.records,
            self.holds,
            self.wallets,
            self.clock,
            self.hold_seconds,
            self.autopilot.floor_refusal,
        )
        self.sweeper = Sweep(self.ledger, self.clock, self.records, self.holds)

    # ------------------------------------------------------------ the token

    async def live(self, presented: str) -> tuple[AgentToken, Wallet]:
        """The token and its wallet, if the token may act at all: 401 for an
        unknown token, 403 (``token_revoked``, ``token_expired``, ``token_frozen``)
        for one that can do nothing. Checked before any work is done for it."""
        token, wallet = await self.wallets.verify(presented)
        dead = token_state(token, wallet, self.clock.now_us())
        if dead is not None:
            raise dead_token(dead)
        return token, wallet

    async def permit(self, presented: str, category: str, action: str, target: str) -> Wallet:
        """A change or deletion an agent token asks for (no money moves): the token
        must be live and its category allowed; the request is audited either way
        (event ``change``). The caller checks that the wallet owns the object."""
        token, wallet = await self.wallets.verify(presented)
        dead = token_state(token, wallet, self.clock.now_us())
        refused: TollwayError | None = None
        if dead is not None:
            refused = dead_token(dead)
        elif category_refused(token, wallet, category):
            refused = forbidden("category_blocked", f"category {category!r} is not allowed for this token")
        row = self.audit.row(
            wallet.id,
            "change",
            token_id=token.id,
            actor="agent",
            action=action,
            target=target,
            category=category,
            status="declined" if refused else "allowed",
            reason=refused.code if refused else None,
        )
        await self.audit.write([row])
        if refused is not None:
            raise refused
        return wallet

    async def revoke(self, token_id: str, actor: str = "admin") -> AgentToken:
        """Revoke a token, then void every hold it made and decline what waits for
        approval: nothing it authorized before the revoke can be captured."""
        token = await self.wallets.revoke(token_id, actor)
        rows = await self.records.where(
            A.c.token_id == token_id, A.c.status.in_(("approved", "pending_approval"))
        )
        for d in rows:
            try:
                if d.status == "pending_approval":
                    why = "the token was revoked"
                    await self.records.set_status(d, "declined", why, actor=actor, reason="token_revoked")
                else:
                    await self.holds.resolve(await self.holds.opened(d.id, None), None, actor)
            except TollwayError as e:  # resolved meanwhile (captured before the revoke, or expired)
                if e.code not in ("authorization_not_open", "authorization_changed", "authorization_expired"):
                    raise
        return token

    # -------------------------------------------------------------- authorize

    async def recurring(
        self, wallet_id: str, *, amount: int, payee: str, category: str, idempotency_key: str, memo: str = ""
    ) -> Decision:
        """A charge the platform makes on the wallet's behalf (metered hosting, a
        domain's renewal): no agent token asks, so the token's limits, the approval
        threshold and the runaway-loop guard do not apply (a standing commitment,
        not an agent's impulse); the wallet's policy does: categories, payees,
        spending limits and provider caps, held in the ledger like any other.
        Idempotent by key: across processes, one decision per key."""
        wallet = await self.wallets.get(wallet_id)
        token = standing_token(wallet)
        t0 = asyncio.get_running_loop().time()
        amount, payee, category = check_request(amount, payee, category, idempotency_key, "usd", wallet, memo)
        key = f"{token.id}:{idempotency_key}"
        rh = request_hash(amount, payee, category, "usd", memo)
        seen = await self.records.seen(key)
        if seen is not None:
            if seen.request_hash != rh:
                raise conflict("idempotency_conflict", "this key was used for a different charge", None)
            return seen
        return await self._decide(
            token, wallet, key, rh, amount, payee, category, memo, None, t0, standing=True
        )

    async def authorize(
        self,
        presented: str,
        *,
        amount: Any,
        payee: Any,
        category: Any,
        idempotency_key: Any,
        currency: Any = "usd",
        memo: str = "",
        hold_seconds: int | None = None,
    ) -> Decision:
        """``payee``: a host or a 0x address; a memo made with :func:`pay_to_memo`
        names a further payee (the payTo behind a host) that every payee rule,
        provider cap and velocity limit also applies to."""
        with tracing.span("wallet.authorize") as sp:
            d = await self._authorize(
                presented, amount, payee, category, idempotency_key, currency, memo, hold_seconds
            )
            if sp is not None:
                sp.set_attribute("tollway.wallet.id", d.wallet_id)
                sp.set_attribute("tollway.wallet.authorization", d.id)
                sp.set_attribute("tollway.wallet.decision", d.status)
                sp.set_attribute("tollway.charge_micros", d.amount)
            return d

    async def _authorize(
        self,
        presented: str,
        amount: Any,
        payee: Any,
        category: Any,
        idempotency_key: Any,
        currency: Any,
        memo: str,
        hold_seconds: int | None,
    ) -> Decision:
        token, wallet = await self.wallets.verify(presented)
        t0 = asyncio.get_running_loop().time()
        amount, payee, category = check_request(
            amount, payee, category, idempotency_key, currency, wallet, memo
        )
        key = f"{token.id}:{idempotency_key}"
        rh = request_hash(amount, payee, category, currency, memo)
        while (running := self._inflight.get(key)) is not None:  # the same request, being decided here
            await asyncio.wait([running])
        fut = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            seen = await self.records.seen(key)
            if seen is not None:
                if seen.request_hash != rh:
                    raise conflict(
                        "idempotency_conflict",
                        "this idempotency key was used for a different authorization",
                        None,
                    )
                return seen
            return await self._decide(token, wallet, key, rh, amount, payee, category, memo, hold_seconds, t0)
        finally:
            self._inflight.pop(key, None)
            fut.set_result(None)

    async def _decide(
        self,
        token: AgentToken,
        wallet: Wallet,
        key: str,
        rh: str,
        amount: int,
        payee: str,
        category: str,
        memo: str,
        hold_seconds: int | None,
        t0: float,
        *,
        standing: bool = False,
    ) -> Decision:
        now = self.clock.now_us()
        timeout = hold_seconds or self.hold_seconds
        d = Decision(
            new_id("wauth"), wallet.id, token.id, key, rh, amount, "usd", payee, category, "declined", None,
            [], 0, now + timeout * 1_000_000, memo, now, now,
            also=tuple(m.lower() for m in PAY_TO.findall(memo)),
        )  # fmt: skip
        reason, message = screen(token, wallet, d, self.clock.now_us())
        if (
            reason is None and not standing
        ):  # the autopilot's spend floor (not the platform's recurring charges)
            reason, message = await self.autopilot.floor_refusal(wallet, amount)
        if (
            reason is None
            and not standing
            and wallet.policy.approval_threshold is not None
            and amount > wallet.policy.approval_threshold
        ):
            d.status = "pending_approval"
            d.expires_at_us = now + wallet.policy.approval_timeout_seconds * 1_000_000
            d.message = "above the wallet's approval threshold: waiting for a human (tollway approvals)"
        elif reason is None and not standing:
            reason, message = await self.velocity.check(token, wallet, d)
        if reason is None and d.status != "pending_approval":
            reason, message = await self.holds.reserve(token, wallet, d, timeout)
            if reason is None:
                d.status = "approved"
                self.holds.remember(d)
        if reason is not None:
            d.status, d.reason, d.message = "declined", reason, message
        loop = asyncio.get_running_loop()
        d.decided_ns = int(((d.decided_at or loop.time()) - t0) * 1e9)
        opened = d.id
        if await self.records.save(d, "authorization"):  # another process decided it first: its answer
            self.holds.forget(opened)
        d.durable_ns = int((loop.time() - t0) * 1e9)
        return d

    # ------------------------------------------------------ capture and void

    async def get(self, auth_id: str, token_id: str | None = None) -> Decision:
        return await self.records.get(auth_id, token_id)

    async def captured(self, auth_id: str) -> bool:
        """Whether the authorization was captured, by the ledger's word: another
        process's capture posts the hold before its record says so (on SQLite the
        record rides with that process's next ledger batch)."""
        d = await self.records.get(auth_id)
        if d.status == "captured":
            return True
        if d.status != "approved" or not d.legs:
            return False
        r = await self.ledger.resolution_of(d.legs[0][0])
        return r is not None and r.kind == TransferKind.POST_PENDING

    async def capture(
        self, auth_id: str, amount: Any = None, *, token_id: str | None = None, actor: str = "agent"
    ) -> Decision:
        """Take ``amount`` (default: all held) and release the rest; 0 voids. An
        agent's capture needs a live token (a revoked one's holds are voided)."""
        d = await self.holds.opened(auth_id, token_id)
        if actor == "agent":
            self._not_signed(d)
            token = await self.wallets.token(d.token_id)
            dead = token_state(token, await self.wallets.get(d.wallet_id), self.clock.now_us())
            if dead is not None:
                raise dead_token(dead)
        take = d.amount if amount is None else amount
        if isinstance(take, bool) or not isinstance(take, int) or not 0 <= take <= d.amount:
            raise invalid("invalid_amount", f"amount is an integer from 0 to the {d.amount} held", "amount")
        return await self.holds.resolve(d, take, actor)

    async def void(self, auth_id: str, *, token_id: str | None = None, actor: str = "agent") -> Decision:
        d = await self.records.get(auth_id, token_id)
        if d.status == "pending_approval":
            return await self.records.set_status(
                d, "declined", "approval_required", actor=actor, reason="approval_required"
            )
        d = await self.holds.opened(auth_id, token_id)
        if actor == "agent":
            self._not_signed(d)
        return await self.holds.resolve(d, None, actor)

    @staticmethod
    def _not_signed(d: Decision) -> None:
        """A hold the broker signed a payment against is the broker's to resolve:
        the settlement captures it, and it is released once the signature has
        expired (an agent's void would free money a server can still take)."""
        if d.also:
            raise conflict(
                "authorization_signed",
                f"authorization {d.id} backs a payment the broker signed: it is captured when the payment"
                " settles and released when the signature expires",
                "authorization_id",
            )

    # -------------------------------------------------------------- approvals

    async def pending(self) -> list[Decision]:
        return await self.records.pending()

    async def approve(self, auth_id: str, actor: str) -> Decision:
        return await self.approvals.approve(auth_id, actor)

    async def deny(self, auth_id: str, actor: str) -> Decision:
        return await self.approvals.deny(auth_id, actor)

    # ------------------------------------------------------------------ sweep

    async def sweep(self) -> int:
        return await self.sweeper.sweep()

    async def run(self, interval_s: float) -> None:
        await self.sweeper.run(interval_s)
