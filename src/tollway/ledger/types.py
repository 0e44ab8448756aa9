"""Ledger records: accounts and immutable transfers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from tollway.core.schema import (
    CREDITS_MUST_NOT_EXCEED_DEBITS,
    DEBITS_MUST_NOT_EXCEED_CREDITS,
    EXPIRED,
    PENDING,
    POST_PENDING,
    VOID_PENDING,
)


class AccountKind(StrEnum):
    CUSTOMER = "customer"  # a customer's prepaid balance
    FREE_ALLOWANCE = "free_allowance"
    WALLET = "wallet"
    REVENUE = "revenue"
    FEES = "fees"
    SETTLEMENT = "settlement"
    FUNDING = "funding"  # where money enters (top-ups, grants); may go negative
    BUDGET = "budget"  # a spend limit for one period: what is left of it (never overdrawn)
    INCLUDED = "included"  # what a plan includes for one billing period
    CREDIT = "credit"  # a prepaid credit grant
    QUOTA = "quota"  # a plan's quota for one period, in its own units (requests, ...)
    RECEIVABLE = "receivable"  # usage billed in arrears (overage): owed by the customer


# Kinds that hold somebody's money: they may never be overdrawn.
BOUNDED_KINDS = {
    AccountKind.CUSTOMER,
    AccountKind.FREE_ALLOWANCE,
    AccountKind.WALLET,
    AccountKind.BUDGET,
    AccountKind.INCLUDED,
    AccountKind.CREDIT,
    AccountKind.QUOTA,
}


def default_flags(kind: AccountKind) -> int:
    return DEBITS_MUST_NOT_EXCEED_CREDITS if kind in BOUNDED_KINDS else 0


class Account(NamedTuple):
    """A ledger account (immutable snapshot)."""

    id: str
    kind: str
    flags: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    customer_id: str | None
    name: str
    created_at_us: int

    @property
    def balance(self) -> int:
        """Posted credits minus posted debits (what the holder owns)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """Balance less what is reserved by pending debits."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def debits_must_not_exceed_credits(self) -> bool:
        return bool(self.flags & DEBITS_MUST_NOT_EXCEED_CREDITS)

    @property
    def credits_must_not_exceed_debits(self) -> bool:
        return bool(self.flags & CREDITS_MUST_NOT_EXCEED_DEBITS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "account",
            "kind": self.kind,
            "name": self.name,
            "customer_id": self.customer_id,
            "debits_must_not_exceed_credits": self.debits_must_not_exceed_credits,
            "credits_must_not_exceed_debits": self.credits_must_not_exceed_debits,
            "debits_pending": self.debits_pending,
            "debits_posted": self.debits_posted,
            "credits_pending": self.credits_pending,
            "credits_posted": self.credits_posted,
            "balance": self.balance,
            "available": self.available,
            "created_at_us": self.created_at_us,
        }


class TransferKind(StrEnum):
    POSTED = "posted"  # single-phase
    PENDING = "pending"  # a reservation
    POST_PENDING = "post_pending"  # resolves a pending: amount is what was taken
    VOID_PENDING = "void_pending"  # resolves a pending: nothing taken
    EXPIRED = "expired"  # a void made by the timeout


def kind_of(flags: int) -> TransferKind:
    if flags & PENDING:
        return TransferKind.PENDING
    if flags & POST_PENDING:
        return TransferKind.POST_PENDING
    if flags & EXPIRED:
        return TransferKind.EXPIRED
    if flags & VOID_PENDING:
        return TransferKind.VOID_PENDING
    return TransferKind.POSTED


class Transfer(NamedTuple):
    """An immutable transfer. Post, void and expiry are transfers too."""

    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    flags: int
    pending_id: str | None
    expires_at_us: int | None
    idempotency_key: str | None
    description: str
    created_at_us: int

    @property
    def kind(self) -> TransferKind:
        return kind_of(self.flags)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "transfer",
            "kind": self.kind.value,
            "debit_account_id": self.debit_account_id,
            "credit_account_id": self.credit_account_id,
            "amount": self.amount,
            "pending_id": self.pending_id,
            "expires_at_us": self.expires_at_us,
            "idempotency_key": self.idempotency_key,
            "description": self.description,
            "created_at_us": self.created_at_us,
        }


__all__ = [
    "EXPIRED",
    "PENDING",
    "POST_PENDING",
    "VOID_PENDING",
    "Account",
    "AccountKind",
    "Transfer",
    "TransferKind",
]
