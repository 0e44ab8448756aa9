"""Spend policies, modeled on Stripe Issuing's spending controls.

A wallet has a :class:`Policy`; each agent token carries a subset of it
(:class:`TokenLimits`). Amounts are micro-USD (``"$10"`` is accepted on input).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import idna
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tollway.core.money import parse_amount

CATEGORIES = (
    "ai_inference",
    "api_access",
    "domains",
    "dns",
    "hosting",
    "compute",
    "storage",
    "data",
    "email",
    "other",
)
Interval = Literal["per_authorization", "daily", "weekly", "monthly", "yearly", "all_time"]
PROVIDER_CAP = 100_000_000  # $100 a month per provider, by default


def _money(v: Any, param: str) -> int:
    try:
        return parse_amount(v, param)
    except Exception as e:  # TollwayError: say it the pydantic way
        raise ValueError(getattr(e, "message", str(e))) from None


def _categories(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    bad = [c for c in v if c not in CATEGORIES]
    if bad:
        raise ValueError(f"unknown category {bad[0]!r}; categories: {', '.join(CATEGORIES)}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpendingLimit(_Strict):
    amount: int
    interval: Interval
    categories: list[str] | None = None  # None: every category

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> int:
        return _money(v, "amount")

    @field_validator("categories")
    @classmethod
    def _cats(cls, v: list[str] | None) -> list[str] | None:
        return _categories(v)


class Velocity(_Strict):
    """Runaway-loop guard, per token over the last minute (0 = off). Tripping it
    freezes the token until a human unfreezes it."""

    max_payments_per_payee_per_minute: int = Field(0, ge=0, le=1_000_000)
    max_spend_per_minute: int = 0

    @field_validator("max_spend_per_minute", mode="before")
    @classmethod
    def _spend(cls, v: Any) -> int:
        return 0 if v in (0, "0", "$0") else _money(v, "max_spend_per_minute")


class Policy(_Strict):
    spending_limits: list[SpendingLimit] = Field(default_factory=list, max_length=20)
    allowed_categories: list[str] | None = None  # None: every category not blocked
    blocked_categories: list[str] = Field(default_factory=list)
    allowed_payees: list[str] | None = None  # hosts or x402 payTo addresses; None: any not blocked
    blocked_payees: list[str] = Field(default_factory=list)
    provider_cap: int = PROVIDER_CAP  # per provider (payee) per month
    provider_caps: dict[str, int] = Field(default_factory=dict)  # per payee overrides
    approval_threshold: int | None = None  # above it, a human approves
    approval_timeout_seconds: int = Field(3600, ge=10, le=30 * 86_400)
    expires_at_us: int | None = None
    velocity: Velocity = Velocity()
    currency: Literal["usd"] = "usd"

    @field_validator("allowed_categories", "blocked_categories")
    @classmethod
    def _cats(cls, v: list[str] | None) -> list[str] | None:
        return _categories(v)

    @field_validator("allowed_payees", "blocked_payees")
    @classmethod
    def _payees(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [normalize_payee(p) for p in v]

    @field_validator("provider_cap", mode="before")
    @classmethod
    def _cap(cls, v: Any) -> int:
        return _money(v, "provider_cap")

    @field_validator("provider_caps", mode="before")
    @classmethod
    def _caps(cls, v: Any) -> dict[str, int]:
        if not isinstance(v, dict):
            raise ValueError("provider_caps maps a payee to an amount")
        return {normalize_payee(k): _money(a, f"provider_caps.{k}") for k, a in v.items()}

    @field_validator("approval_threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> int | None:
        return None if v is None else _money(v, "approval_threshold")

    def cap_for(self, payee: str) -> int:
        return self.provider_caps.get(payee, self.provider_cap)


class Scope(_Strict):
    """Where a token may spend, within its wallet's policy (None: the wallet's)."""

    categories: list[str] | None = None
    payees: list[str] | None = None

    @field_validator("categories")
    @classmethod
    def _cats(cls, v: list[str] | None) -> list[str] | None:
        return _categories(v)

    @field_validator("payees")
    @classmethod
    def _payees(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [normalize_payee(p) for p in v]


class TokenLimits(Scope):
    """What one agent token may spend: a subset of its wallet's policy."""

    max_per_payment: int | None = None
    total_allowance: int | None = None
    expires_at_us: int | None = None
    single_use: bool = False
    # The token's own limits per period (a budget request's amount and period),
    # on top of the wallet's: budget accounts of their own (wallets/caps.py).
    spending_limits: list[SpendingLimit] = Field(default_factory=list, max_length=20)

    @field_validator("max_per_payment", "total_allowance", mode="before")
    @classmethod
    def _amounts(cls, v: Any) -> int | None:
        return None if v is None else _money(v, "amount")


_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def normalize_host(host: str) -> str:
    """One spelling per host, for every comparison (allowed and blocked payees,
    provider caps, velocity keys): lower case, no trailing dot, IDNA A-labels
    (``bücher.example`` and ``xn--bcher-kva.example`` are one host), IP
    addresses in their canonical form. Raises ``ValueError``."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        pass
    if not h.isascii():
        try:
            h = idna.encode(h, uts46=True).decode().lower().rstrip(".")
        except (idna.IDNAError, UnicodeError):
            raise ValueError(f"{host!r} is not a valid host name") from None
    if len(h) > 253 or not _HOST.match(h):
        raise ValueError(f"{host!r} is not a valid host name")
    return h


def normalize_payee(p: str) -> str:
    """A payee: a 0x address (lower case), or a host (:func:`normalize_host`),
    given alone or as a URL; the scheme, credentials, port and path are not
    part of it (``https://API.Vendor.com.:443/x`` is ``api.vendor.com``)."""
    if not isinstance(p, str) or not p.strip() or len(p) > 255:
        raise ValueError("a payee is a host name or a 0x address")
    p = p.strip().lower()
    if p.startswith("0x"):
        return p
    if "://" in p:
        p = p.split("://", 1)[1]
    authority = re.split(r"[/?#]", p, maxsplit=1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):  # [IPv6]:port
        host = authority.split("]", 1)[0] + "]"
    elif authority.count(":") == 1:
        host = authority.split(":", 1)[0]
    else:
        host = authority
    return normalize_host(host)
