"""The ledger's stable error codes."""

from __future__ import annotations

from tollway.core.errors import TollwayError, conflict, invalid, not_found, payment


def account_not_found(account_id: str, param: str) -> TollwayError:
    return not_found("account_not_found", f"no account {account_id!r}", param)


def transfer_not_found(transfer_id: str, param: str = "pending_id") -> TollwayError:
    return not_found("transfer_not_found", f"no transfer {transfer_id!r}", param)


def accounts_must_differ() -> TollwayError:
    return invalid("accounts_must_differ", "debit and credit account must differ", "credit_account_id")


def exceeds_credits(account_id: str, available: int, amount: int) -> TollwayError:
    return payment(
        "insufficient_funds",
        f"account {account_id!r} has {available} micro-USD available, {amount} needed",
        "amount",
    )


def exceeds_debits(account_id: str) -> TollwayError:
    return conflict(
        "exceeds_debits",
        f"account {account_id!r} may not be credited beyond its debits",
        "amount",
    )


def overflow() -> TollwayError:
    return invalid("overflow", "amount would overflow an account balance", "amount")


def not_pending(transfer_id: str) -> TollwayError:
    return invalid("transfer_not_pending", f"transfer {transfer_id!r} is not pending", "pending_id")


def already_resolved(transfer_id: str, how: str) -> TollwayError:
    code, word = {
        "post_pending": ("pending_transfer_already_posted", "posted"),
        "void_pending": ("pending_transfer_already_voided", "voided"),
        "expired": ("pending_transfer_expired", "expired"),
    }.get(how, ("pending_transfer_already_resolved", "resolved"))
    return conflict(code, f"pending transfer {transfer_id!r} is already {word}", "pending_id")


def exceeds_pending(pending_amount: int, amount: int) -> TollwayError:
    return invalid(
        "amount_exceeds_pending",
        f"cannot post {amount}: the pending transfer holds {pending_amount}",
        "amount",
    )


def idempotency_conflict(key: str) -> TollwayError:
    return conflict(
        "idempotency_key_reused",
        f"idempotency key {key!r} was already used with a different request",
        "idempotency_key",
    )


def account_exists(account_id: str) -> TollwayError:
    return conflict("account_exists", f"account {account_id!r} already exists", "id")


def linked_event_failed(failed_at: int, cause: TollwayError) -> TollwayError:
    """A transfer of a chain that did not fail itself: transfer ``failed_at``
    (its index in the chain) did, with ``cause``, so nothing of the chain applied."""
    return conflict(
        "linked_event_failed",
        f"transfer {failed_at} of this linked chain failed ({cause.code}); nothing in the chain was applied",
        "linked",
    )


def linked_event_chain_open() -> TollwayError:
    return invalid(
        "linked_event_chain_open", "the last transfer of a batch may not be linked to a next one", "linked"
    )
