"""Requests to the ledger writer. Each becomes at most one immutable transfer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    """A usage event recorded atomically with the transfer that pays for it."""

    meter: str
    quantity: int
    customer_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The total charged for this usage when it spans several transfers;
    # None means the amount of the transfer it is recorded with.
    amount: int | None = None


@dataclass(slots=True)
class CreateTransfer:
    debit_account_id: str
    credit_account_id: str
    amount: int
    pending: bool = False
    timeout_s: int | None = None
    description: str = ""
    idempotency_key: str | None = None
    usage: Usage | None = None
    # Linked to the next request: the chain commits or fails as one (see Ledger.chain).
    linked: bool = False
    # One of a chain's split legs: together they take ``amount``, each as much
    # as its debit account has available of what is still needed, the last
    # one all of the rest (see tollway.ledger.apply).
    split: bool = False

    def request_hash(self) -> str:
        parts: tuple[Any, ...] = (
            "create",
            self.debit_account_id,
            self.credit_account_id,
            self.amount,
            self.pending,
            self.timeout_s,
            self.description,
        )
        # A split leg's amount is a most, not the amount: part of what it asks.
        # (Stored hashes never change: nothing is added for a plain transfer.)
        return _hash(*parts, "split") if self.split else _hash(*parts)


@dataclass(slots=True)
class ResolvePending:
    """Post (amount=None means the full amount) or void a pending transfer."""

    pending_id: str
    post: bool
    amount: int | None = None
    expired: bool = False
    idempotency_key: str | None = None
    usage: Usage | None = None
    linked: bool = False  # see CreateTransfer.linked

    def request_hash(self) -> str:
        return _hash("post" if self.post else "void", self.pending_id, self.amount)


Op = CreateTransfer | ResolvePending


# The same text as json.dumps(obj, separators=(",", ":")), without building an
# encoder per call. Request hashes are stored: their input must never change.
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _hash(*parts: Any) -> str:
    return hashlib.sha256(COMPACT_JSON.encode(parts).encode()).hexdigest()
