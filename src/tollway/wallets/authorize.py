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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.charge import Charger
from tollway.charge.allocation import Allocations
from tollway.charge.hold import Cap, Hold, Leg, Payer, Source
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError, conflict, forbidden, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import wallet_authorizations as A
from tollway.core.storage import writer
from tollway.gateway.ratelimit import Tally, Windows
from tollway.ledger import Ledger
from tollway.ledger.riders import Statement
from tollway.observe import metrics
from tollway.wallets.audit import Audit
from tollway.wallets.policy import CATEGORIES, Policy, SpendingLimit, normalize_payee
from tollway.wallets.store import AgentToken, Wallet, Wallets

log = logging.getLogger("tollway.wallets")

LIMITS = "sys_wallet_limits"
PAID_OUT = "sys_settlement"  # where captured wallet money goes: out to the merchant
REASONS = (
    "spending_limit_exceeded",
    "category_blocked",
    "payee_blocked",
    "token_expired",
    "token_revoked",
    "approval_required",
    "velocity_limit",
    "insufficient_funds",
)
_COLS = [c.name for c in A.columns]
_SQLITE_INSERT = (
    f"INSERT INTO wallet_authorizations ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})"
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


@dataclass(slots=True)
class Decision:
    id: str
    wallet_id: str
    token_id: str
    idempotency_key: str
    request_hash: str
    amount: int
    currency: str
    payee: str
    category: str
    status: str  # approved | declined | pending_approval | captured | voided | expired
    reason: str | None
    legs: list[list[Any]]
    captured: int
    expires_at_us: int
    memo: str
    created_at_us: int
    updated_at_us: int
    decided_ns: int = 0  # how long the decision took, before its commit (not stored)
    durable_ns: int = 0  # how long until the decision and its hold were committed (not stored)
    decided_at: float = 0.0
    message: str = ""
    also: tuple[str, ...] = ()  # further payees it pays (the broker: the payTo behind a host; not stored)

    @property
    def payees(self) -> tuple[str, ...]:
        """Every name the payment goes to: the policy's payee rules apply to each."""
        return (self.payee, *(p for p in self.also if p != self.payee))

    def row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.wallet_id,
            self.token_id,
            self.idempotency_key,
            self.request_hash,
            self.amount,
            self.currency,
            self.payee,
            self.category,
            self.status,
            self.reason,
            json.dumps(self.legs, separators=(",", ":")),
            self.captured,
            self.expires_at_us,
            self.memo,
            self.created_at_us,
            self.updated_at_us,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "object": "wallet_authorization",
            "id": self.id,
            "wallet_id": self.wallet_id,
            "token_id": self.token_id,
            "status": self.status,
            "approved": self.status in ("approved", "captured"),
            "reason": self.reason,
            "amount": self.amount,
            "currency": self.currency,
            "payee": self.payee,
            "category": self.category,
            "held": self.amount if self.status == "approved" else 0,
            "captured": self.captured,
            "expires_at_us": self.expires_at_us,
            "memo": self.memo,
            "created_at_us": self.created_at_us,
        }
        if self.message:
            d["message"] = self.message
        return d

    def refusal(self) -> TollwayError:
        """A declined decision as a 402 in the one error shape."""
        return TollwayError(ErrorType.PAYMENT, self.reason or "declined", self.message, status=402)

    def not_open(self) -> TollwayError:
        """Nothing can be spent from it (captured, voided, expired): a 409."""
        return conflict("authorization_not_open", f"authorization {self.id} is {self.status}", None)


_FIELDS = [
    f for f in Decision.__slots__ if f not in ("decided_ns", "durable_ns", "decided_at", "message", "also")
]
# The broker names the payTo address behind a host in the memo; read back with the row.
_PAY_TO = re.compile(r"\bpayTo (0x[0-9a-fA-F]{40})\b")


def pay_to_memo(memo: str, pay_to: str) -> str:
    """A memo that carries the payTo address, so the decision read back still names it."""
    suffix = f" payTo {pay_to.lower()}"
    return memo[: 500 - len(suffix)] + suffix


_BY_KEY = f"SELECT {', '.join(_COLS)} FROM wallet_authorizations WHERE idempotency_key = ?"


class _Row:
    """A raw row with the column names ``_from_row`` reads."""

    def __init__(self, *values: Any) -> None:
        for name, v in zip(_COLS, values, strict=True):
            setattr(self, name, v)


def _from_row(r: Any) -> Decision:
    return Decision(
        r.id,
        r.wallet_id,
        r.token_id,
        r.idempotency_key,
        r.request_hash,
        r.amount,
        r.currency,
        r.payee,
        r.category,
        r.status,
        r.reason,
        json.loads(r.legs),
        r.captured,
        r.expires_at_us,
        r.memo,
        r.created_at_us,
        r.updated_at_us,
        also=tuple(m.lower() for m in _PAY_TO.findall(r.memo or "")),
    )


_DAY_US = 86_400_000_000


def _periods(now_us: int) -> dict[str, str]:
    d = dt.datetime.fromtimestamp(now_us / 1_000_000, dt.UTC)
    iso = d.isocalendar()
    return {
        "daily": d.strftime("d%Y%m%d"),
        "weekly": f"w{iso.year}{iso.week:02d}",
        "monthly": d.strftime("m%Y%m"),
        "yearly": d.strftime("y%Y"),
        "all_time": "all",
    }


def token_state(token: AgentToken, wallet: Wallet, now_us: int) -> tuple[str, str] | None:
    """Why a token can do nothing at all (revoked, expired, frozen), or None."""
    lim, pol = token.limits, wallet.policy
    if token.revoked_at_us is not None:
        return "token_revoked", "this agent token was revoked"
    if (lim.expires_at_us is not None and lim.expires_at_us <= now_us) or (
        pol.expires_at_us is not None and pol.expires_at_us <= now_us
    ):
        return "token_expired", "this agent token (or its wallet's policy) has expired"
    if token.frozen_at_us is not None:
        why = f"this agent token is frozen ({token.frozen_reason}); a human must unfreeze it"
        return "velocity_limit", why
    return None


def _dead(state: tuple[str, str]) -> TollwayError:
    """A token that can do nothing, as a 403."""
    return forbidden("token_frozen" if state[0] == "velocity_limit" else state[0], state[1])


def _category_refused(token: AgentToken, wallet: Wallet, c: str) -> bool:
    pol, lim = wallet.policy, token.limits
    return (
        c in pol.blocked_categories
        or (pol.allowed_categories is not None and c not in pol.allowed_categories)
        or (lim.categories is not None and c not in lim.categories)
    )


def _h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


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
    funded: Allocations = field(init=False)
    _recent: dict[str, Decision] = field(init=False, default_factory=dict)
    _inflight: dict[str, asyncio.Future[None]] = field(init=False, default_factory=dict)
    # Approved authorizations of this process, with their holds: a capture or
    # void here needs no reads (bounded: the oldest are forgotten, not lost).
    _holds: dict[str, Hold] = field(init=False, default_factory=dict)
    _open_auths: dict[str, Decision] = field(init=False, default_factory=dict)
    _resolving: set[str] = field(init=False, default_factory=set)
    # The limit accounts an authorization must fit, by wallet, token, payee,
    # category and UTC day (every period's name follows from the day), with
    # the policy they were made for: funded once, then no work per decision.
    _caps: dict[tuple[str, str, str, str, int], tuple[Policy, tuple[Cap, ...]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.funded = Allocations(self.ledger)

    # ------------------------------------------------------------ the token

    async def live(self, presented: str) -> tuple[AgentToken, Wallet]:
        """The token and its wallet, if the token may act at all: 401 for an
        unknown token, 403 (``token_revoked``, ``token_expired``, ``token_frozen``)
        for one that can do nothing. Checked before any work is done for it."""
        token, wallet = await self.wallets.verify(presented)
        dead = token_state(token, wallet, self.clock.now_us())
        if dead is not None:
            raise _dead(dead)
        return token, wallet

    async def permit(self, presented: str, category: str, action: str, target: str) -> Wallet:
        """A change or deletion an agent token asks for (no money moves): the token
        must be live and its category allowed; the request is audited either way
        (event ``change``). The caller checks that the wallet owns the object."""
        token, wallet = await self.wallets.verify(presented)
        dead = token_state(token, wallet, self.clock.now_us())
        refused: TollwayError | None = None
        if dead is not None:
            refused = _dead(dead)
        elif _category_refused(token, wallet, category):
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
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            q = select(A).where(A.c.token_id == token_id, A.c.status.in_(("approved", "pending_approval")))
            rows = [_from_row(r) for r in await conn.execute(q)]
        for d in rows:
            try:
                if d.status == "pending_approval":
                    why = "the token was revoked"
                    await self._set(d, "declined", why, actor=actor, reason="token_revoked")
                else:
                    await self._resolve(await self._open(d.id, None), None, actor)
            except TollwayError as e:  # resolved meanwhile (captured before the revoke, or expired)
                if e.code not in ("authorization_not_open", "authorization_changed", "authorization_expired"):
                    raise
        return token

    # -------------------------------------------------------------- authorize

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
        token, wallet = await self.wallets.verify(presented)
        t0 = asyncio.get_running_loop().time()
        amount, payee, category = _check(amount, payee, category, idempotency_key, currency, wallet, memo)
        key = f"{token.id}:{idempotency_key}"
        rh = _h(amount, payee, category, currency, memo)
        while (running := self._inflight.get(key)) is not None:  # the same request, being decided here
            await asyncio.wait([running])
        fut = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            seen = await self._seen(key)
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
    ) -> Decision:
        now = self.clock.now_us()
        timeout = hold_seconds or self.hold_seconds
        d = Decision(
            new_id("wauth"), wallet.id, token.id, key, rh, amount, "usd", payee, category, "declined", None,
            [], 0, now + timeout * 1_000_000, memo, now, now,
            also=tuple(m.lower() for m in _PAY_TO.findall(memo)),
        )  # fmt: skip
        reason, message = self._screen(token, wallet, d)
        if (
            reason is None
            and wallet.policy.approval_threshold is not None
            and amount > wallet.policy.approval_threshold
        ):
            d.status = "pending_approval"
            d.expires_at_us = now + wallet.policy.approval_timeout_seconds * 1_000_000
            d.message = "above the wallet's approval threshold: waiting for a human (tollway approvals)"
        elif reason is None:
            reason, message = await self._velocity(token, wallet, d)
        if reason is None and d.status != "pending_approval":
            reason, message = await self._hold(token, wallet, d, timeout)
            if reason is None:
                d.status = "approved"
                if len(self._open_auths) > 100_000:
                    self._open_auths.clear()
                    self._holds.clear()
                self._open_auths[d.id] = d
        if reason is not None:
            d.status, d.reason, d.message = "declined", reason, message
        loop = asyncio.get_running_loop()
        d.decided_ns = int(((d.decided_at or loop.time()) - t0) * 1e9)
        await self._save(d, "authorization")
        d.durable_ns = int((loop.time() - t0) * 1e9)
        return d

    def _screen(self, token: AgentToken, wallet: Wallet, d: Decision) -> tuple[str | None, str]:
        pol, lim = wallet.policy, token.limits
        dead = token_state(token, wallet, self.clock.now_us())
        if dead is not None:
            return dead
        if lim.single_use and token.used_at_us is not None:
            return "token_expired", "this single-use agent token was already used"
        c = d.category
        if _category_refused(token, wallet, c):
            return "category_blocked", f"category {c!r} is not allowed for this token"
        blocked = [p for p in d.payees if p in pol.blocked_payees]
        if blocked:
            return "payee_blocked", f"payee {blocked[0]!r} is blocked for this token"
        if pol.allowed_payees is not None and not any(p in pol.allowed_payees for p in d.payees):
            return "payee_blocked", f"payee {d.payee!r} is not allowed for this token"
        if lim.max_per_payment is not None and d.amount > lim.max_per_payment:
            return (
                "spending_limit_exceeded",
                f"above this token's maximum per payment ({lim.max_per_payment})",
            )
        for sl in pol.spending_limits:
            if sl.interval == "per_authorization" and _applies(sl, c) and d.amount > sl.amount:
                return "spending_limit_exceeded", f"above the wallet's per-authorization limit ({sl.amount})"
        return None, ""

    async def _velocity(self, token: AgentToken, wallet: Wallet, d: Decision) -> tuple[str | None, str]:
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

    async def caps(
        self, token: AgentToken, wallet: Wallet, payee: str, category: str, also: tuple[str, ...] = ()
    ) -> tuple[Cap, ...]:
        """The limit accounts an authorization must also fit, funded and ready:
        each spending limit, the provider cap of each payee, the token's allowance."""
        now = self.clock.now_us()
        allowance = token.id if token.limits.total_allowance is not None else ""
        payees = " ".join((payee, *also))
        key = (wallet.id, allowance, payees, category, now // _DAY_US)
        hit = self._caps.get(key)
        if hit is not None and hit[0] is wallet.policy:
            return hit[1]
        caps = await self._make_caps(token, wallet, (payee, *also), category, now)
        if len(self._caps) > 10_000:
            self._caps.clear()
        self._caps[key] = (wallet.policy, caps)
        return caps

    async def _make_caps(
        self, token: AgentToken, wallet: Wallet, payees: tuple[str, ...], category: str, now: int
    ) -> tuple[Cap, ...]:
        periods = _periods(now)
        out = []
        for sl in wallet.policy.spending_limits:
            if sl.interval == "per_authorization" or not _applies(sl, category):
                continue
            tag = _h(sl.interval, sl.categories)[:8]
            acct = f"wl_{wallet.id}_{tag}_{periods[sl.interval]}"
            name = f"wallet {sl.interval} spending limit"
            await self.funded.ensure(acct, "budget", wallet.customer_id, sl.amount, LIMITS, name)
            out.append(Cap(acct, name, LIMITS, None, "spending_limit_exceeded"))
        for payee in dict.fromkeys(payees):
            acct = f"wp_{wallet.id}_{_h(payee)[:8]}_{periods['monthly']}"
            name = f"monthly cap for provider {payee}"
            await self.funded.ensure(
                acct, "budget", wallet.customer_id, wallet.policy.cap_for(payee), LIMITS, name
            )
            out.append(Cap(acct, name, LIMITS, None, "spending_limit_exceeded"))
        if token.limits.total_allowance is not None:
            out.append(
                Cap(
                    f"wt_{token.id}", "agent token's total allowance", LIMITS, None, "spending_limit_exceeded"
                )
            )
        return tuple(out)

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

    async def _hold(
        self, token: AgentToken, wallet: Wallet, d: Decision, hold_s: int
    ) -> tuple[str | None, str]:
        claimed = False
        if token.limits.single_use:
            if not await self.wallets.claim_single_use(token.id):
                return "token_expired", "this single-use agent token was already used"
            claimed = True
        caps = await self.caps(token, wallet, d.payee, d.category, d.payees[1:])
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

    # ------------------------------------------------------ capture and void

    async def get(self, auth_id: str, token_id: str | None = None) -> Decision:
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(A).where(A.c.id == auth_id))).first()
        if r is None or (token_id is not None and r.token_id != token_id):
            raise not_found("authorization_not_found", f"no authorization {auth_id!r}", "authorization_id")
        return _from_row(r)

    async def capture(
        self, auth_id: str, amount: Any = None, *, token_id: str | None = None, actor: str = "agent"
    ) -> Decision:
        """Take ``amount`` (default: all held) and release the rest; 0 voids. An
        agent's capture needs a live token (a revoked one's holds are voided)."""
        d = await self._open(auth_id, token_id)
        if actor == "agent":
            self._not_signed(d)
            token = await self.wallets.token(d.token_id)
            dead = token_state(token, await self.wallets.get(d.wallet_id), self.clock.now_us())
            if dead is not None:
                raise _dead(dead)
        take = d.amount if amount is None else amount
        if isinstance(take, bool) or not isinstance(take, int) or not 0 <= take <= d.amount:
            raise invalid("invalid_amount", f"amount is an integer from 0 to the {d.amount} held", "amount")
        return await self._resolve(d, take, actor)

    async def void(self, auth_id: str, *, token_id: str | None = None, actor: str = "agent") -> Decision:
        d = await self.get(auth_id, token_id)
        if d.status == "pending_approval":
            return await self._set(
                d, "declined", "approval_required", actor=actor, reason="approval_required"
            )
        d = await self._open(auth_id, token_id)
        if actor == "agent":
            self._not_signed(d)
        return await self._resolve(d, None, actor)

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

    async def _open(self, auth_id: str, token_id: str | None) -> Decision:
        """An approved authorization, from this process's memory or the database."""
        d = self._open_auths.get(auth_id)
        if d is None or (token_id is not None and d.token_id != token_id):
            d = await self.get(auth_id, token_id)
        if d.status != "approved" or auth_id in self._resolving:
            status = "being resolved" if auth_id in self._resolving else d.status
            raise conflict(
                "authorization_not_open", f"authorization {auth_id} is {status}", "authorization_id"
            )
        return d

    async def _resolve(self, d: Decision, take: int | None, actor: str, voided: str = "voided") -> Decision:
        """Capture ``take`` (None: void) in one ledger batch: every leg of the hold
        is posted or voided in the same transaction, so a concurrent capture or
        void (in any process) finds them all resolved and changes nothing. The
        record follows the ledger (and is recovered from it after a crash)."""
        self._resolving.add(d.id)
        try:
            hold = self._holds.get(d.id) or await self._rebuild(d)
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
                    await self._finish(d, "expired", 0, "the hold expired before it was captured", actor)
                    raise conflict(
                        "authorization_expired", f"authorization {d.id} expired before capture", None
                    ) from None
                if e.code.startswith("pending_transfer_already"):
                    raise conflict(
                        "authorization_not_open",
                        f"authorization {d.id} was resolved meanwhile",
                        "authorization_id",
                    ) from None
                raise
            status = "captured" if take else voided
            return await self._finish(d, status, take or 0, None, actor)
        finally:
            self._resolving.discard(d.id)
            self._holds.pop(d.id, None)
            self._open_auths.pop(d.id, None)

    async def _finish(
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

    async def _rebuild(self, d: Decision) -> Hold:
        legs = []
        for tid, kind, acct, payee in d.legs:
            t = await self.ledger.get_transfer(tid)
            src: Source | Cap = Cap(acct, "limit", payee) if kind == "cap" else Source(acct, payee)
            legs.append(Leg(src, t))
        hold = Hold(self.ledger, Payer(legs[0].source.account_id), d.amount, "wallet_payment", PAID_OUT)
        hold.legs, hold._hold_id = legs, legs[0].pending.id
        hold.payer = replace(hold.payer, customer_id=await self._customer(d.wallet_id))
        hold.idempotency_key = f"wauth:{d.idempotency_key}"
        return hold

    async def _customer(self, wallet_id: str) -> str | None:
        return (await self.wallets.get(wallet_id)).customer_id

    # -------------------------------------------------------------- approvals

    async def pending(self) -> list[Decision]:
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(A).where(A.c.status == "pending_approval").order_by(A.c.id))
            return [_from_row(r) for r in rows]

    async def approve(self, auth_id: str, actor: str) -> Decision:
        d = await self.get(auth_id)
        if d.status != "pending_approval":
            raise conflict(
                "authorization_not_pending", f"authorization {auth_id} is {d.status}", "authorization_id"
            )
        if d.expires_at_us <= self.clock.now_us():
            await self._set(d, "declined", "approval_required", reason="approval_required")
            raise conflict(
                "approval_expired", f"authorization {auth_id} waited past its approval timeout", None
            )
        token = await self.wallets.token(d.token_id)
        wallet = await self.wallets.get(d.wallet_id)
        reason, message = self._screen(token, wallet, d)
        if reason is None:
            reason, message = await self._hold(token, wallet, d, self.hold_seconds)
        if reason is not None:
            return await self._set(d, "declined", message, actor=actor, reason=reason)
        return await self._set(d, "approved", None, actor=actor, legs=d.legs, expires_at_us=d.expires_at_us)

    async def deny(self, auth_id: str, actor: str) -> Decision:
        d = await self.get(auth_id)
        if d.status != "pending_approval":
            raise conflict(
                "authorization_not_pending", f"authorization {auth_id} is {d.status}", "authorization_id"
            )
        return await self._set(d, "declined", "a human denied it", actor=actor, reason="approval_required")

    async def sweep(self) -> int:
        """Decline approvals left waiting past their timeout, and close
        authorizations past their hold's time from what the ledger did: captured
        (a record a crash left behind), expired, or still held (released now)."""
        now = self.clock.now_us()
        await self.ledger.riders_committed()
        async with self.engine.connect() as conn:
            due = select(A).where(A.c.status.in_(("pending_approval", "approved")), A.c.expires_at_us <= now)
            rows = [_from_row(r) for r in await conn.execute(due)]
        for d in rows:
            if d.id in self._resolving:
                continue
            try:
                if d.status == "pending_approval":
                    await self._set(d, "declined", "nobody approved it in time", reason="approval_required")
                else:
                    await self._expire(d)
            except TollwayError as e:  # another process got there first
                if e.code not in ("authorization_not_open", "authorization_changed"):
                    raise
        return len(rows)

    async def _expire(self, d: Decision) -> None:
        from tollway.core.schema import POST_PENDING
        from tollway.core.schema import ledger_transfers as T

        first = d.legs[0][0] if d.legs else None
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(T.c.flags, T.c.amount).where(T.c.pending_id == first))).first()
        if r is None:  # still held: release it
            try:
                await self._resolve(d, None, "system", voided="expired")
            except TollwayError as e:
                if e.code != "authorization_expired":
                    raise
            return
        if r[0] & POST_PENDING:  # captured, and the record was lost with its process
            await self._finish(d, "captured", int(r[1]), "recovered from the ledger", "system")
        else:
            await self._finish(d, "expired", 0, "the hold expired before it was captured", "system")

    async def run(self, interval_s: float) -> None:
        """:meth:`sweep` forever (in the server's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)  # not at start-up: a short-lived process has nothing due
            try:
                await self.sweep()
            except Exception:
                log.exception("wallet sweep failed; retrying in %ss", interval_s)

    # ---------------------------------------------------------------- storage

    async def _seen(self, key: str) -> Decision | None:
        d = self._recent.get(key)
        if d is not None:
            return d
        r = await self.wallets.reads.one(_BY_KEY, key)  # one point read, off SQLAlchemy's path
        return None if r is None else _from_row(_Row(*r))

    async def _save(self, d: Decision, event: str) -> None:
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
                self._adopt(d, _from_row(_Row(*r)))
            return
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(A), [dict(zip(_COLS, d.row(), strict=True))])
        except IntegrityError:  # another process decided the same request first: its answer
            self._recent.pop(d.idempotency_key, None)
            seen = await self._seen(d.idempotency_key)
            if seen is None:
                raise
            self._adopt(d, seen)
            return
        await self.audit.write([arow])

    def _adopt(self, d: Decision, seen: Decision) -> None:
        """Answer with the decision another process recorded for this key (the
        holds share their ledger transfers through the key: one reservation)."""
        self._open_auths.pop(d.id, None)
        self._holds.pop(d.id, None)
        for f in _FIELDS:
            setattr(d, f, getattr(seen, f))
        self._recent[d.idempotency_key] = seen

    async def _set(
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


def _applies(sl: SpendingLimit, category: str) -> bool:
    return sl.categories is None or category in sl.categories


def _check(
    amount: Any, payee: Any, category: Any, idem: Any, currency: Any, wallet: Wallet, memo: Any
) -> tuple[int, str, str]:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0 or amount > 2**62:
        raise invalid("invalid_amount", "amount must be a positive integer of micro-USD", "amount")
    if not isinstance(currency, str) or currency.lower() != wallet.policy.currency:
        raise invalid(
            "currency_mismatch", f"this wallet holds {wallet.policy.currency}, not {currency!r}", "currency"
        )
    if not isinstance(category, str) or category not in CATEGORIES:
        raise invalid("invalid_category", f"category must be one of {', '.join(CATEGORIES)}", "category")
    try:
        p = normalize_payee(payee)
    except ValueError as e:
        raise invalid("invalid_payee", str(e), "payee") from None
    if not isinstance(idem, str) or not 1 <= len(idem) <= 255:
        raise invalid(
            "invalid_idempotency_key", "idempotency_key is a string of 1-255 characters", "idempotency_key"
        )
    if not isinstance(memo, str) or len(memo) > 500:
        raise invalid("invalid_memo", "memo is at most 500 characters", "memo")
    return amount, p, category


def alerts(url: str) -> Callable[[dict[str, Any]], None] | None:
    """A best-effort webhook for frozen tokens (``[wallets] alert_webhook_url``)."""
    if not url:
        return None
    tasks: set[asyncio.Task[None]] = set()

    async def post(event: dict[str, Any]) -> None:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(url, json=event, timeout=aiohttp.ClientTimeout(10)) as r,
            ):
                if r.status >= 300:
                    log.warning("wallet alert webhook answered %s", r.status)
        except Exception as e:  # an alert must never break an authorization
            log.warning("wallet alert webhook failed: %s", e)

    def send(event: dict[str, Any]) -> None:
        t = asyncio.get_running_loop().create_task(post(event))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    return send
