"""Budget requests: an agent asks for its budget, the owner decides.

An agent, with a bootstrap credential of its wallet
(:mod:`tollway.wallets.bootstrap`) or a live agent token, asks for a budget
(:class:`BudgetCaps`: an amount per period, categories, payees) with a
purpose, or for a raise of one of its wallet's tokens (``raise_of``: with
a token, only its own). The
request alone changes nothing. The owner approves it, with the caps asked or
any others (the owner is the authority), or denies it with a reason; a
request nobody decided expires (``[wallets] budget_request_seconds``).

On approval the delegated token's id and caps are fixed; the token itself is
issued at the requester's first read after approval, in the transaction that
marks the request ``issued``, so its secret is shown exactly once however
many reads race (and is never stored). Issuing a raise revokes the token it
raises (its open holds are voided, as any revoke does). Every step is audited.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, conflict, forbidden, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import wallet_budget_requests as R
from tollway.core.storage import writer
from tollway.wallets.audit import Audit
from tollway.wallets.authorize import Authorizer
from tollway.wallets.bootstrap import PREFIX, Bootstraps
from tollway.wallets.policy import Scope, SpendingLimit, TokenLimits, _money
from tollway.wallets.screening import dead_token, token_state
from tollway.wallets.store import Wallets, policy_error

log = logging.getLogger("tollway.wallets")
STATUSES = ("pending", "approved", "issued", "denied", "expired")
MAX_PENDING = 20  # per wallet: more waiting requests are refused (409)


class BudgetCaps(Scope):
    """What a budget request asks for, and what an approval grants (its
    categories and payees: None, the wallet's)."""

    amount: int  # micro-USD per period ("$5" is accepted)
    period: Literal["daily", "weekly", "monthly", "yearly", "all_time"] = "monthly"
    max_per_payment: int | None = None
    expires_at_us: int | None = Field(None, ge=0, lt=2**62)  # the token's expiry

    @field_validator("amount", "max_per_payment", mode="before")
    @classmethod
    def _amounts(cls, v: Any) -> int | None:
        return None if v is None else _money(v, "amount")

    @field_validator("amount")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("amount is a positive number of micro-USD")
        return v

    def limits(self) -> TokenLimits:
        """The delegated token's limits: exactly these caps (the wallet's policy still applies)."""
        whole = self.period == "all_time"
        return TokenLimits(
            max_per_payment=self.max_per_payment,
            total_allowance=self.amount if whole else None,
            expires_at_us=self.expires_at_us,
            categories=self.categories,
            payees=self.payees,
            spending_limits=[] if whole else [SpendingLimit(amount=self.amount, interval=self.period)],
        )


def parse_caps(value: Any, param: str) -> BudgetCaps:
    try:
        return BudgetCaps.model_validate(value)
    except ValidationError as e:
        raise policy_error(e, param) from None


@dataclass(frozen=True, slots=True)
class Requester:
    wallet_id: str
    id: str  # the bootstrap credential's or the agent token's id
    kind: Literal["bootstrap", "agent_token"]


class BudgetRequests:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        wallets: Wallets,
        audit: Audit,
        authorizer: Authorizer,
        bootstraps: Bootstraps,
        ttl_s: int,
    ) -> None:
        self.engine, self.clock, self.wallets, self.audit = engine, clock, wallets, audit
        self.authorizer, self.bootstraps, self.ttl_s = authorizer, bootstraps, ttl_s

    async def requester(self, presented: str) -> Requester:
        """Who asks: a live bootstrap credential, or a live agent token (401/403 otherwise)."""
        if presented.startswith(PREFIX):
            b = await self.bootstraps.verify(presented)
            return Requester(b.wallet_id, b.id, "bootstrap")
        token, wallet = await self.wallets.verify(presented)
        dead = token_state(token, wallet, self.clock.now_us())
        if dead is not None:
            raise dead_token(dead)
        return Requester(wallet.id, token.id, "agent_token")

    # ------------------------------------------------------------ the agent

    async def create(
        self, presented: str, *, caps: Any, purpose: Any, raise_of: Any = None
    ) -> dict[str, Any]:
        who = await self.requester(presented)
        asked = parse_caps(caps, "caps")
        if not isinstance(purpose, str) or not 1 <= len(purpose.strip()) <= 1000:
            raise invalid(
                "invalid_purpose", "purpose is 1-1000 characters: what the budget is for", "purpose"
            )
        if raise_of is not None:
            if not isinstance(raise_of, str):
                raise invalid("invalid_raise_of", "raise_of is an agent token id", "raise_of")
            try:
                old = await self.wallets.token(raise_of)
            except TollwayError:
                old = None
            if old is None or old.wallet_id != who.wallet_id:  # another wallet's token: as if unknown
                raise not_found("agent_token_not_found", f"no agent token {raise_of!r}", "raise_of")
            if who.kind == "agent_token" and raise_of != who.id:  # an agent raises only its own caps
                raise forbidden("raise_of_other_token", "an agent token may only ask to raise its own caps")
            if old.revoked_at_us is not None:
                raise conflict("agent_token_revoked", f"agent token {raise_of!r} is revoked", "raise_of")
        now = self.clock.now_us()
        row = {
            "id": new_id("wbr"),
            "wallet_id": who.wallet_id,
            "requester": who.id,
            "raise_of": raise_of,
            "asked": asked.model_dump_json(),
            "purpose": purpose,
            "status": "pending",
            "approved": None,
            "token_id": None,
            "decided_by": None,
            "reason": None,
            "created_at_us": now,
            "expires_at_us": now + self.ttl_s * 1_000_000,
            "decided_at_us": None,
            "issued_at_us": None,
        }
        await self._expire_due()
        async with writer(self.engine).begin() as conn:
            waiting = select(func.count()).where(R.c.wallet_id == who.wallet_id, R.c.status == "pending")
            if ((await conn.execute(waiting)).scalar() or 0) >= MAX_PENDING:
                raise conflict(
                    "too_many_budget_requests",
                    f"this wallet has {MAX_PENDING} budget requests waiting for its owner",
                    None,
                )
            await conn.execute(insert(R), [row])
        await self.audit.write(
            [
                self.audit.row(
                    who.wallet_id,
                    "budget_requested",
                    token_id=who.id if who.kind == "agent_token" else None,
                    actor="agent",
                    request_id=row["id"],
                    requester=who.id,
                    raise_of=raise_of,
                    caps=asked.model_dump(),
                    purpose=purpose,
                )
            ]
        )
        return _dict(row)

    async def poll(self, presented: str, request_id: str) -> dict[str, Any]:
        """The request's status, for its requester only. The first read after
        approval issues the token and carries its secret (``token``); later
        reads (and a read that lost the race) show only its id."""
        who = await self.requester(presented)
        r = await self._row(request_id)
        if r is None or r["requester"] != who.id or r["wallet_id"] != who.wallet_id:
            raise not_found("budget_request_not_found", f"no budget request {request_id!r}", "request_id")
        if r["status"] == "pending" and r["expires_at_us"] <= self.clock.now_us():
            await self._expire(r)
            r = await self._row(request_id)
            assert r is not None
        if r["status"] != "approved":
            return _dict(r)
        return await self._issue(r)

    async def _issue(self, r: dict[str, Any]) -> dict[str, Any]:
        caps = BudgetCaps.model_validate_json(r["approved"])
        now = self.clock.now_us()

        async def claim(conn: AsyncConnection) -> bool:
            done = await conn.execute(
                update(R)
                .where(R.c.id == r["id"], R.c.status == "approved")
                .values(status="issued", issued_at_us=now)
            )
            return bool(done.rowcount)

        issued = await self.wallets.issue(
            r["wallet_id"],
            name=f"budget request {r['id']}",
            limits=caps.limits(),
            token_id=r["token_id"],
            actor="agent",
            claim=claim,
            request_id=r["id"],
        )
        out = await self._row(r["id"])
        assert out is not None
        if issued is None:  # another read issued it: its secret went there
            return _dict(out)
        token, secret = issued
        if r["raise_of"]:  # the token exists, its secret only in this answer: never fail it
            try:
                await self.authorizer.revoke(r["raise_of"], actor=f"budget request {r['id']}")
            except Exception as e:
                if not (isinstance(e, TollwayError) and e.code == "agent_token_revoked"):
                    log.exception("budget request %s: token %s was not revoked", r["id"], r["raise_of"])
        return {**_dict(out), "token": secret, "agent_token": token.to_dict()}

    # ------------------------------------------------------------ the owner

    async def list(self, status: str | None = None, wallet_id: str | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise invalid("invalid_status", f"status is one of {', '.join(STATUSES)}", "status")
        await self._expire_due()
        q = select(R).order_by(R.c.id)
        if status is not None:
            q = q.where(R.c.status == status)
        if wallet_id is not None:
            q = q.where(R.c.wallet_id == wallet_id)
        async with self.engine.connect() as conn:
            return [_dict(dict(r._mapping)) for r in await conn.execute(q)]

    async def get(self, request_id: str) -> dict[str, Any]:
        r = await self._row(request_id)
        if r is None:
            raise not_found("budget_request_not_found", f"no budget request {request_id!r}", "request_id")
        return _dict(r)

    async def approve(self, request_id: str, caps: Any = None, actor: str = "admin") -> dict[str, Any]:
        """Approve with the caps asked, or ``caps`` (the owner's edit). Once only."""
        r = await self._pending(request_id)
        asked = BudgetCaps.model_validate_json(r["asked"])
        granted = asked if caps is None else parse_caps(caps, "caps")
        self.wallets.check_limits(granted.limits().model_dump())  # e.g. an expiry in the past: 400
        token_id = new_id("agt")
        await self._decide(
            r, status="approved", approved=granted.model_dump_json(), token_id=token_id, decided_by=actor
        )
        await self.audit.write(
            [
                self.audit.row(
                    r["wallet_id"],
                    "budget_approved",
                    actor=actor,
                    request_id=r["id"],
                    asked=asked.model_dump(),
                    approved=granted.model_dump(),
                    edited=granted != asked,
                    token_id_to_issue=token_id,
                    raise_of=r["raise_of"],
                )
            ]
        )
        return await self.get(request_id)

    async def deny(self, request_id: str, reason: Any, actor: str = "admin") -> dict[str, Any]:
        if not isinstance(reason, str) or not 1 <= len(reason.strip()) <= 500:
            raise invalid("invalid_reason", "reason is 1-500 characters", "reason")
        r = await self._pending(request_id)
        await self._decide(r, status="denied", reason=reason, decided_by=actor)
        await self.audit.write(
            [self.audit.row(r["wallet_id"], "budget_denied", actor=actor, request_id=r["id"], reason=reason)]
        )
        return await self.get(request_id)

    # ------------------------------------------------------------ internals

    async def _row(self, request_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(R).where(R.c.id == request_id))).first()
        return None if r is None else dict(r._mapping)

    async def _pending(self, request_id: str) -> dict[str, Any]:
        r = await self._row(request_id)
        if r is None:
            raise not_found("budget_request_not_found", f"no budget request {request_id!r}", "request_id")
        if r["status"] == "pending" and r["expires_at_us"] <= self.clock.now_us():
            await self._expire(r)
            raise conflict("budget_request_expired", f"budget request {request_id} has expired", None)
        if r["status"] != "pending":
            code = "budget_request_expired" if r["status"] == "expired" else "budget_request_not_pending"
            raise conflict(code, f"budget request {request_id} is {r['status']}", None)
        return r

    async def _decide(self, r: dict[str, Any], **values: Any) -> None:
        """Move a pending request on, once: a concurrent decision (or expiry) wins, and this is 409."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            done = await conn.execute(
                update(R)
                .where(R.c.id == r["id"], R.c.status == "pending", R.c.expires_at_us > now)
                .values(decided_at_us=now, **values)
            )
        if not done.rowcount:
            raise conflict(
                "budget_request_not_pending",
                f"budget request {r['id']} was decided or expired meanwhile",
                None,
            )

    async def _expire(self, r: dict[str, Any]) -> None:
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            done = await conn.execute(
                update(R)
                .where(R.c.id == r["id"], R.c.status == "pending", R.c.expires_at_us <= now)
                .values(status="expired", decided_at_us=now, decided_by="system")
            )
        if done.rowcount:
            row = self.audit.row(
                r["wallet_id"], "budget_expired", request_id=r["id"], expires_at_us=r["expires_at_us"]
            )
            await self.audit.write([row])

    async def _expire_due(self) -> None:
        now = self.clock.now_us()
        async with self.engine.connect() as conn:
            due = select(R).where(R.c.status == "pending", R.c.expires_at_us <= now).limit(1000)
            rows = [dict(r._mapping) for r in await conn.execute(due)]
        for r in rows:
            await self._expire(r)


def _dict(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "budget_request",
        "id": r["id"],
        "wallet_id": r["wallet_id"],
        "requester": r["requester"],
        "raise_of": r["raise_of"],
        "caps": json.loads(r["asked"]),
        "purpose": r["purpose"],
        "status": r["status"],
        "approved_caps": None if r["approved"] is None else json.loads(r["approved"]),
        "token_id": r["token_id"],
        "decided_by": r["decided_by"],
        "reason": r["reason"],
        "created_at_us": r["created_at_us"],
        "expires_at_us": r["expires_at_us"],
        "decided_at_us": r["decided_at_us"],
        "issued_at_us": r["issued_at_us"],
    }
