"""An authorization's decision: the record of one request to spend, as stored
in ``wallet_authorizations`` and answered to the agent."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from tollway.core.errors import ErrorType, TollwayError, conflict
from tollway.core.schema import wallet_authorizations as A

REASONS = (
    "spending_limit_exceeded",
    "category_blocked",
    "payee_blocked",
    "token_expired",
    "token_revoked",
    "approval_required",
    "velocity_limit",
    "insufficient_funds",
    "wallet_below_floor",
)
COLS = [c.name for c in A.columns]


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


FIELDS = [
    f for f in Decision.__slots__ if f not in ("decided_ns", "durable_ns", "decided_at", "message", "also")
]
# The broker names the payTo address behind a host in the memo; read back with the row.
PAY_TO = re.compile(r"\bpayTo (0x[0-9a-fA-F]{40})\b")


def pay_to_memo(memo: str, pay_to: str) -> str:
    """A memo that carries the payTo address, so the decision read back still names it."""
    suffix = f" payTo {pay_to.lower()}"
    return memo[: 500 - len(suffix)] + suffix


class Row:
    """A raw row with the column names :func:`from_row` reads."""

    def __init__(self, *values: Any) -> None:
        for name, v in zip(COLS, values, strict=True):
            setattr(self, name, v)


def from_row(r: Any) -> Decision:
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
        also=tuple(m.lower() for m in PAY_TO.findall(r.memo or "")),
    )


def request_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
