"""Paid routes: which requests pay, how much, and where they go once paid.

A rule matches on one or more HTTP methods, a path pattern (``*`` matches
any rest of the path, ``:name`` one segment; case-insensitive, against the
request's canonical path: see ``paths.py``) and optionally a host. Its price
is fixed (``"$0.001"``, or atomic units as a plain integer string), or
variable: per KiB of request body, or per unit of a named query or JSON body
field. Routes no rule matches are free and pass through.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tollway.core.errors import invalid
from tollway.x402.paths import canonical

_ADDRESS = r"^(0x[0-9a-fA-F]{40})?$"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


MAX_UNITS = 2**256 - 1  # an EVM uint256: no price or payment is larger
_DOLLARS = re.compile(r"\$(\d{1,78})(?:\.(\d{1,78}))?")
_COUNT = re.compile(r"(\d{1,30})(?:\.(\d{1,30}))?")  # a price field's value, as text


def atomic(price: str, decimals: int) -> int:
    """``"$0.001"`` → atomic units of a USD asset with ``decimals``; ``"1000"`` → 1000.
    A dollar price must come to a whole number of atomic units; only digits and
    one point are read (no ``NaN``, ``Infinity``, exponents or signs)."""
    p = price.strip()
    if p.startswith("$"):
        m = _DOLLARS.fullmatch(p)
        if m is None:
            raise ValueError(f'price {price!r} is not a dollar amount like "$0.001"')
        whole, frac = m.group(1), (m.group(2) or "").rstrip("0")
        if len(frac) > decimals:
            raise ValueError(f"price {price!r} is not a whole number of the asset's units")
        units: int = int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0")
    elif p.isascii() and p.isdigit() and len(p) <= 78:
        units = int(p)
    else:
        raise ValueError(f'price {price!r}: write dollars as "$0.001" or atomic units as "1000"')
    if units > MAX_UNITS:
        raise ValueError(f"price {price!r} is too large")
    return units


class Rule(BaseModel):
    """One paid route (``[[x402.rules]]`` in tollway.toml, or the admin API's JSON)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    methods: list[str] = Field(default_factory=lambda: ["GET"], min_length=1)
    path: str = Field(min_length=1, pattern=r"^/")
    host: str = ""  # empty: any host
    # Where a paid request goes: an http(s) base URL, "demo" for the built-in demo
    # origin, or "self" for tollway's own AI routes (/v1/chat/completions, /v1/embeddings).
    origin: str = Field(min_length=1)
    price: str = ""  # per request (fixed), or per unit (variable); not for ai_max_cost
    # ai_max_cost: the most the AI request can cost (its prompt and max_tokens, at the
    # model's rates), paid up front; no customer account is charged.
    price_by: Literal["fixed", "body_kib", "query", "body", "ai_max_cost"] = "fixed"
    price_field: str = ""  # the query or JSON body field counted, for price_by = query | body
    unauthenticated_only: bool = False  # callers with a valid API key pass without paying
    # With unauthenticated_only: a plan feature (lookup key) the key's plan must
    # include to pass without paying; empty: any valid key passes.
    feature: str = Field("", pattern=r"^([a-z0-9][a-z0-9_.:-]{0,99})?$")
    pay_to: str = Field("", pattern=_ADDRESS)  # empty: [x402] pay_to
    # The payment's network and asset (empty: [x402]'s). The built-in facilitator
    # settles only [x402]'s; others need an external one ([x402] facilitator_url).
    network: str = Field("", pattern=r"^(eip155:[1-9][0-9]{0,18})?$")
    asset: str = Field("", pattern=_ADDRESS)
    asset_name: str = ""  # the asset's EIP-712 domain name and version (empty: [x402]'s)
    asset_version: str = ""
    description: str = Field("", max_length=500)
    mime_type: str = "application/json"
    max_timeout_seconds: int = Field(0, ge=0, le=86_400)  # 0: [x402] max_timeout_seconds
    # The x402 schemes a payer may use: "exact" pays the price; "upto" authorizes it
    # as a maximum (Permit2) of which what was used is settled: an AI route's
    # metered cost, or an origin's Settlement-Overrides amount. Empty: both for
    # price_by = "ai_max_cost", "exact" otherwise.
    schemes: list[Literal["exact", "upto"]] = Field(default_factory=list, max_length=2)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        up = [m.upper() for m in v]
        bad = [m for m in up if m not in _METHODS]
        if bad:
            raise ValueError(f"unknown method {bad[0]!r}")
        return up

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        canon, ambiguous = canonical(v.encode("utf-8"))
        if canon != v or ambiguous is not None:
            raise ValueError(f"path must be canonical ({canon!r}): no '//', dot segments, '%', '\\' or ';'")
        return v

    @field_validator("price")
    @classmethod
    def _price_form(cls, v: str) -> str:
        if v:
            atomic(v, 6)  # the form; the asset's decimals are applied when pricing
        return v

    @field_validator("origin")
    @classmethod
    def _origin(cls, v: str) -> str:
        if v not in ("demo", "self") and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError('origin must be an http(s) URL, "demo" or "self"')
        return v.rstrip("/")

    @model_validator(mode="after")
    def _price(self) -> Rule:
        if (self.price_by == "ai_max_cost") != (self.origin == "self"):
            raise ValueError('price_by = "ai_max_cost" goes with origin = "self", and only with it')
        if self.price_by == "ai_max_cost":
            if self.price:
                raise ValueError('price_by = "ai_max_cost" sets the price itself: leave price out')
            return self
        atomic(self.price, 6)  # the form; the asset's decimals are applied when pricing
        if self.price_by in ("query", "body") and not self.price_field:
            raise ValueError(f"price_by = {self.price_by!r} needs price_field")
        return self

    @field_validator("schemes")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a scheme is listed twice")
        return v

    def offered(self) -> tuple[str, ...]:
        """The schemes this rule takes, in the order the 402 offers them."""
        if self.schemes:
            return tuple(self.schemes)
        return ("exact", "upto") if self.price_by == "ai_max_cost" else ("exact",)

    def compiled(self) -> re.Pattern[str]:
        out, i = "", 0
        for m in re.finditer(r"\*|:[A-Za-z_][A-Za-z0-9_]*", self.path):
            out += re.escape(self.path[i : m.start()])
            out += ".*" if m.group() == "*" else "[^/]+"
            i = m.end()
        out += re.escape(self.path[i:])
        return re.compile(f"^{out}$", re.IGNORECASE)


class Rules:
    """The rule set, compiled for matching (first match wins)."""

    def __init__(self, rules: list[Rule]) -> None:
        names = [r.name for r in rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate rule name {sorted(dup)[0]!r}")
        self.rules = rules
        self._compiled = [(r, r.compiled()) for r in rules]

    def match(self, method: str, path: str, host: str) -> Rule | None:
        host = host.split(":", 1)[0].lower()
        for rule, pattern in self._compiled:
            if method in rule.methods or (method == "HEAD" and "GET" in rule.methods):
                if (not rule.host or rule.host.lower() == host) and pattern.match(path):
                    return rule
        return None

    def export(self) -> list[dict[str, Any]]:
        return [r.model_dump() for r in self.rules]


def price_of(rule: Rule, decimals: int, body: bytes, query: str, json_body: Any) -> int:
    """The price of one request under ``rule``, in atomic units. A variable price
    counts its field (rounded up, at least one unit); a missing field counts one
    unit. The field given twice (names compared case-insensitively: origins
    differ on which copy they read) is ``duplicate_parameter``; a value that is
    not a non-negative decimal number is ``invalid_parameter``; a price above
    ``MAX_UNITS`` is ``price_too_large`` (all 400s naming the field)."""
    if rule.price_by == "ai_max_cost":
        raise ValueError("an ai_max_cost price comes from the inference service (Paywall.quote)")
    unit = atomic(rule.price, decimals)
    if rule.price_by == "fixed":
        return unit
    if rule.price_by == "body_kib":
        return unit * max(1, math.ceil(len(body) / 1024))
    name = rule.price_field
    if rule.price_by == "query":
        given: list[Any] = [v for k, v in parse_qsl(query, keep_blank_values=True) if _same(k, name)]
    else:
        given = [v for k, v in json_body.items() if _same(k, name)] if isinstance(json_body, dict) else []
    if len(given) > 1:
        raise invalid("duplicate_parameter", f"{name!r} is given more than once: it sets the price", name)
    if not given:
        return unit
    price = unit * max(1, _count(given[0], name))
    if price > MAX_UNITS:
        raise invalid("price_too_large", f"the price for this {name!r} is larger than any payment", name)
    return price


def _same(key: str, name: str) -> bool:
    return key.casefold() == name.casefold()


def _count(v: Any, name: str) -> int:
    """A price field's value, rounded up: a non-negative JSON number or decimal text."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, float) and math.isfinite(v) and v >= 0:
        return math.ceil(v)
    m = _COUNT.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise invalid("invalid_parameter", f"{name!r} must be a non-negative decimal number", name)
    return int(m.group(1)) + (1 if (m.group(2) or "").strip("0") else 0)
