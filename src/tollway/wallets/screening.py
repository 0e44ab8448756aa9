"""Screening: the checks an authorization meets before any money moves (the
token, the category, the payees, the per-payment limits), and the request's
own validation."""

from __future__ import annotations

from typing import Any

from tollway.core.errors import TollwayError, forbidden, invalid
from tollway.wallets.decision import Decision
from tollway.wallets.policy import CATEGORIES, SpendingLimit, normalize_payee
from tollway.wallets.store import AgentToken, Wallet


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


def dead_token(state: tuple[str, str]) -> TollwayError:
    """A token that can do nothing, as a 403."""
    return forbidden("token_frozen" if state[0] == "velocity_limit" else state[0], state[1])


def category_refused(token: AgentToken, wallet: Wallet, c: str) -> bool:
    pol, lim = wallet.policy, token.limits
    return (
        c in pol.blocked_categories
        or (pol.allowed_categories is not None and c not in pol.allowed_categories)
        or (lim.categories is not None and c not in lim.categories)
    )


def applies(sl: SpendingLimit, category: str) -> bool:
    return sl.categories is None or category in sl.categories


def screen(token: AgentToken, wallet: Wallet, d: Decision, now_us: int) -> tuple[str | None, str]:
    """The policy checks before any money moves: a reason code and message, or (None, "")."""
    pol, lim = wallet.policy, token.limits
    state = token_state(token, wallet, now_us)
    if state is not None:
        return state
    if lim.single_use and token.used_at_us is not None:
        return "token_expired", "this single-use agent token was already used"
    c = d.category
    if category_refused(token, wallet, c):
        return "category_blocked", f"category {c!r} is not allowed for this token"
    blocked = [p for p in d.payees if p in pol.blocked_payees]
    if blocked:
        return "payee_blocked", f"payee {blocked[0]!r} is blocked for this token"
    if pol.allowed_payees is not None and not any(p in pol.allowed_payees for p in d.payees):
        return "payee_blocked", f"payee {d.payee!r} is not allowed for this token"
    if lim.payees is not None and not any(p in lim.payees for p in d.payees):
        return "payee_blocked", f"payee {d.payee!r} is not among this token's payees"
    if lim.max_per_payment is not None and d.amount > lim.max_per_payment:
        return (
            "spending_limit_exceeded",
            f"above this token's maximum per payment ({lim.max_per_payment})",
        )
    for sl in pol.spending_limits:
        if sl.interval == "per_authorization" and applies(sl, c) and d.amount > sl.amount:
            return "spending_limit_exceeded", f"above the wallet's per-authorization limit ({sl.amount})"
    for sl in lim.spending_limits:
        if sl.interval == "per_authorization" and applies(sl, c) and d.amount > sl.amount:
            return "spending_limit_exceeded", f"above this token's per-authorization limit ({sl.amount})"
    return None, ""


def below_floor(available: int, amount: int, floor: int) -> tuple[str, str] | None:
    """Why spending ``amount`` is refused under the floor, or None."""
    if available - amount < floor:
        return (
            "wallet_below_floor",
            f"the wallet's balance ({available} available) would fall below its autopilot floor ({floor})"
            " after this payment: new spending is stopped until it is topped up",
        )
    return None


def check_request(
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
