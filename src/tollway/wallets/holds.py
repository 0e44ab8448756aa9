"""The ledger holds behind approved authorizations: reserve one (the wallet's
account and every limit as a cap, in one batch), and capture or void it
(every leg resolved in one batch, the record following the ledger). Approved
holds of this process stay in memory until resolved; another process's (or
one made before a restart) is re-attached from the legs its record lists."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tollway.charge import Charger
from tollway.charge.hold import Cap, Hold, Leg, Payer, Source
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, conflict
from tollway.ledger import Ledger
from tollway.wallets.caps import WalletCaps
from tollway.wallets.decision import Decision
from tollway.wallets.records import Records
from tollway.wallets.store import AgentToken, Wallet, Wallets

PAID_OUT = "sys_settlement"  # where captured wallet money goes: out to the merchant


@dataclass
class Holds:
    ledger: Ledger
    charger: Charger
    clock: Clock
    wallets: Wallets
    caps: WalletCaps
    records: Records
    # Approved authorizations of this process, with their holds: a capture or
    # void here needs no reads (bounded: the oldest are forgotten, not lost).
    open: dict[str, Decision] = field(init=False, default_factory=dict)
    resolving: set[str] = field(init=False, default_factory=set)
    _holds: dict[str, Hold] = field(init=False, default_factory=dict)

    def remember(self, d: Decision) -> None:
        """``d`` is approved: its hold stays here until captured or voided."""
        if len(self.open) > 100_000:
            self.open.clear()
            self._holds.clear()
        self.open[d.id] = d

    def forget(self, auth_id: str) -> None:
        self.open.pop(auth_id, None)
        self._holds.pop(auth_id, None)

    def _hold_for(self, wallet: Wallet, d: Decision, caps: tuple[Cap, ...], timeout: int) -> Hold:
        payer = Payer(wallet.account_id, wallet.customer_id, (Source(wallet.account_id, PAID_OUT),), caps)
        return self.charger.hold(
            payer,
            d.amount,
            meter="wallet_payment",
            payee=PAID_OUT,
            description=f"wallet authorization by {d.token_id}",
            idempotency_key=f"wauth:{d.idempotency_key}",
            timeout_s=timeout,
        )

    async def reserve(
        self, token: AgentToken, wallet: Wallet, d: Decision, hold_s: int
    ) -> tuple[str | None, str]:
        claimed = False
        if token.limits.single_use:
            if not await self.wallets.claim_single_use(token.id):
                return "token_expired", "this single-use agent token was already used"
            claimed = True
        caps = await self.caps.caps(token, wallet, d.payee, d.category, d.payees[1:])
        hold = self._hold_for(wallet, d, caps, hold_s)
        try:
            await hold.reserve(early=True)
            d.decided_at = asyncio.get_running_loop().time()
            await hold.confirm()  # the decision is made; answer once it is durable
        except TollwayError as e:
            if claimed:
                await self.wallets.unclaim(token.id)
            if e.code in ("insufficient_funds", "spending_limit_exceeded"):
                what = "the wallet's balance" if e.code == "insufficient_funds" else "a spending limit"
                return e.code, f"{what} cannot cover {d.amount} micro-USD: {e.message}"
            raise
        self._holds[d.id] = hold
        d.legs = [
            [
                lg.pending.id,
                "cap" if isinstance(lg.source, Cap) else "source",
                lg.source.account_id,
                lg.source.payee,
            ]
            for lg in hold.legs
        ]
        d.expires_at_us = self.clock.now_us() + hold_s * 1_000_000
        return None, ""

    async def opened(self, auth_id: str, token_id: str | None) -> Decision:
        """An approved authorization, from this process's memory or the database."""
        d = self.open.get(auth_id)
        if d is None or (token_id is not None and d.token_id != token_id):
            d = await self.records.get(auth_id, token_id)
        if d.status != "approved" or auth_id in self.resolving:
            status = "being resolved" if auth_id in self.resolving else d.status
            raise conflict(
                "authorization_not_open", f"authorization {auth_id} is {status}", "authorization_id"
            )
        return d

    async def resolve(self, d: Decision, take: int | None, actor: str, voided: str = "voided") -> Decision:
        """Capture ``take`` (None: void) in one ledger batch: every leg of the hold
        is posted or voided in the same transaction, so a concurrent capture or
        void (in any process) finds them all resolved and changes nothing. The
        record follows the ledger (and is recovered from it after a crash).

        In this process one resolution runs at a time, claimed here with no
        await before the claim: :meth:`opened`'s check comes before the caller's
        own awaits (the token's state), so two captures, or a capture and a void,
        could both pass it; the second would then share the first's hold and its
        outcome, and record an amount the ledger never took."""
        if d.id in self.resolving:
            raise conflict(
                "authorization_not_open", f"authorization {d.id} is being resolved", "authorization_id"
            )
        self.resolving.add(d.id)
        try:
            if self.open.get(d.id) is not d:  # read before another resolution here ended: read it again
                now = await self.records.get(d.id)
                if now.status != "approved":
                    raise conflict(
                        "authorization_not_open", f"authorization {d.id} is {now.status}", "authorization_id"
                    )
            hold = self._holds.get(d.id) or await self._attach(d)
            try:
                if take is None:
                    await hold.release()
                else:
                    await hold.settle(
                        take,
                        quantity=take,
                        payee=d.payee,
                        category=d.category,
                        wallet_id=d.wallet_id,
                        token_id=d.token_id,
                        authorization_id=d.id,
                    )
            except TollwayError as e:
                if e.code == "pending_transfer_expired":
                    await self.records.finish(
                        d, "expired", 0, "the hold expired before it was captured", actor
                    )
                    raise conflict(
                        "authorization_expired", f"authorization {d.id} expired before capture", None
                    ) from None
                if e.code.startswith("pending_transfer_already") or e.code == "idempotency_key_reused":
                    # (the key of a leg is the authorization's: another resolution of it used it)
                    raise conflict(
                        "authorization_not_open",
                        f"authorization {d.id} was resolved meanwhile",
                        "authorization_id",
                    ) from None
                raise
            status = "captured" if take else voided
            return await self.records.finish(d, status, take or 0, None, actor)
        finally:
            self.resolving.discard(d.id)
            self._holds.pop(d.id, None)
            self.open.pop(d.id, None)

    async def _attach(self, d: Decision) -> Hold:
        legs = []
        for tid, kind, acct, payee in d.legs:
            t = await self.ledger.get_transfer(tid)
            src: Source | Cap = Cap(acct, "limit", payee) if kind == "cap" else Source(acct, payee)
            legs.append(Leg(src, t))
        payer = Payer(legs[0].source.account_id, await self._customer(d.wallet_id))
        return Hold.attach(
            self.ledger,
            payer,
            d.amount,
            legs,
            meter="wallet_payment",
            payee=PAID_OUT,
            idempotency_key=f"wauth:{d.idempotency_key}",
        )

    async def _customer(self, wallet_id: str) -> str | None:
        return (await self.wallets.get(wallet_id)).customer_id
