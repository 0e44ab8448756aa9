"""API keys: shown once, stored as a SHA-256 hash under a plain lookup prefix.

A key looks like ``tw_<12-char prefix>_<32-char secret>``.  Only the prefix
(to find the row) and ``sha256(key)`` are stored; verification compares
hashes in constant time.  Keys carry scopes and can be revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.charge.hold import Payer
from tollway.core.clock import Clock, SystemClock
from tollway.core.errors import conflict, invalid, not_found, unauthenticated
from tollway.core.ids import new_id
from tollway.core.pointread import PointReader
from tollway.core.schema import api_keys as K
from tollway.core.schema import customers as C
from tollway.core.storage import writer

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SCOPE = re.compile(r"^[a-z0-9_.-]+(:[a-z0-9_.*-]+)*$|^\*$")
_KEY = re.compile(r"^tw_([a-z0-9]{12})_([a-z0-9]{32})$")


def _rand(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# For other secrets made the same way (agent tokens).
random_string, sha256_hex = _rand, _hash


def has_scope(granted: list[str], needed: str) -> bool:
    """``*`` grants everything; ``ledger:*`` grants ``ledger:read``."""
    for g in granted:
        if g == "*" or g == needed:
            return True
        if g.endswith(":*") and needed.startswith(g[:-1]):
            return True
    return False


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential a request presents: ``Authorization: Bearer …`` or ``x-api-key``."""
    h = headers.get("authorization", "")
    scheme, _, token = h.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class PlanStanding(NamedTuple):
    """The customer's plan as the key's point read found it: the columns a
    :class:`KeyJoin` adds, in this order (``tollway.billing`` supplies the join)."""

    plan: str
    status: str
    period_start_us: int
    period_end_us: int
    anchor_us: int
    rev: int  # bumped by every billing change


@dataclass(frozen=True, slots=True)
class KeyJoin:
    """Another face's row read with the key, in the key's one point read (so a
    change there applies on the next request, in every process, at no extra
    read). ``columns`` are a :class:`PlanStanding`'s, in order; ``join`` may
    use ``k`` (the key) and ``c`` (its customer). A missed join: no standing."""

    columns: str
    join: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    customer_id: str
    prefix: str
    name: str
    scopes: list[str]
    created_at_us: int
    revoked_at_us: int | None
    # Set by verify, for the request path: the customer's prepaid account and
    # the stored limit overrides (JSON) of the key and of its customer.
    account_id: str = ""
    limits: str | None = None
    customer_limits: str | None = None
    # The customer's plan, read with the key (the join tollway.billing supplies),
    # or None with no row (or no join).
    billing: PlanStanding | None = None
    prepaid: bool = False  # not a stored key: a request paid up front over x402 (see x402_caller)
    # Not a stored key: an agent token (tollway.wallets.ai_caller): its wallet pays, with the
    # wallet's limits as caps; ``tags`` go on each charge's usage event (category, wallet, token).
    payer: Payer | None = None
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def keeps(self) -> bool:
        """A customer to keep things for (stored responses): not an x402 payment,
        nor an agent token of a wallet that no customer owns."""
        return not self.prepaid and (self.payer is None or self.payer.customer_id is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "api_key",
            "customer_id": self.customer_id,
            "prefix": self.prefix,
            "name": self.name,
            "scopes": self.scopes,
            "created_at_us": self.created_at_us,
            "revoked": self.revoked_at_us is not None,
            "revoked_at_us": self.revoked_at_us,
        }


_COLS = (K.c.id, K.c.customer_id, K.c.prefix, K.c.name, K.c.scopes, K.c.created_at_us)


def _from_row(r: Any) -> ApiKey:
    return ApiKey(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6], *r[7:])  # on every request


def _verify_sql(join: KeyJoin | None) -> str:
    """Verification is on every request: one point read, joined to the customer
    (and to the plan standing, with ``join``)."""
    return (
        "SELECT k.id, k.customer_id, k.prefix, k.name, k.scopes, k.created_at_us, k.revoked_at_us,"
        " c.account_id, k.limits, c.limits, k.secret_hash"
        + (", " + join.columns if join else "")
        + " FROM api_keys k JOIN customers c ON c.id = k.customer_id"
        + (" " + join.join if join else "")
        + " WHERE k.prefix = ?"
    )


class ApiKeys:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock | None = None,
        reads: PointReader | None = None,
        join: KeyJoin | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.reads = reads or PointReader(engine)
        self._verify = _verify_sql(join)
        self._joined = join is not None

    async def create(
        self, customer_id: str, *, name: str = "", scopes: list[str] | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key; returns the record and the secret key (shown once)."""
        scopes = ["*"] if scopes is None else scopes
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and _SCOPE.match(s) for s in scopes)
        ):
            raise invalid(
                "invalid_scopes",
                "scopes is a non-empty list like ['*'] or ['ledger:read']",
                "scopes",
            )
        if not isinstance(name, str) or len(name) > 200:
            raise invalid("invalid_name", "name is at most 200 characters", "name")
        prefix = _rand(12)
        secret = f"tw_{prefix}_{_rand(32)}"
        now = self.clock.now_us()
        row = {
            "id": new_id("key"),
            "customer_id": customer_id,
            "prefix": prefix,
            "secret_hash": _hash(secret),
            "name": name,
            "scopes": json.dumps(scopes),
            "created_at_us": now,
            "revoked_at_us": None,
        }
        async with writer(self.engine).begin() as conn:
            found = await conn.execute(select(C.c.id).where(C.c.id == customer_id))
            if found.first() is None:
                raise not_found("customer_not_found", f"no customer {customer_id!r}", "customer_id")
            await conn.execute(insert(K), [row])
        key = ApiKey(str(row["id"]), customer_id, prefix, name, scopes, now, None)
        return key, secret

    async def list(self, customer_id: str | None = None) -> list[ApiKey]:
        q = select(*_COLS, K.c.revoked_at_us).order_by(K.c.id)
        if customer_id is not None:
            q = q.where(K.c.customer_id == customer_id)
        async with self.engine.connect() as conn:
            return [_from_row(r) for r in await conn.execute(q)]

    async def revoke(self, key_id: str) -> ApiKey:
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            r = (await conn.execute(select(*_COLS, K.c.revoked_at_us).where(K.c.id == key_id))).first()
            if r is None:
                raise not_found("api_key_not_found", f"no API key {key_id!r}", "key_id")
            if r[6] is not None:
                raise conflict("api_key_revoked", f"API key {key_id!r} is already revoked", "key_id")
            await conn.execute(update(K).where(K.c.id == key_id).values(revoked_at_us=now))
        return _from_row((*r[:6], now))

    async def get_limits(self, key_id: str) -> dict[str, Any]:
        return await get_limits(self.engine, K, key_id, "api_key_not_found", "key_id")

    async def set_limits(self, key_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the key's stored overrides (null removes one)."""
        return await set_limits(self.engine, K, key_id, changes, "api_key_not_found", "key_id")

    async def verify(self, presented: str) -> ApiKey:
        """The key's record, or 401 ``invalid_api_key`` / ``api_key_revoked``."""
        m = _KEY.match(presented or "")
        if m is None:
            raise unauthenticated("invalid_api_key", "invalid API key")
        r = await self.reads.one(self._verify, m.group(1))
        if r is None or not hmac.compare_digest(r[10], _hash(presented)):
            raise unauthenticated("invalid_api_key", "invalid API key")
        if r[6] is not None:
            raise unauthenticated("api_key_revoked", "this API key was revoked")
        standing = PlanStanding._make(r[11:17]) if self._joined and r[11] is not None else None
        return _from_row((*r[:10], standing))


async def get_limits(
    engine: AsyncEngine, table: Any, row_id: str, missing: str, param: str
) -> dict[str, Any]:
    """A row's stored ``limits`` overrides (404 if the row does not exist)."""
    async with engine.connect() as conn:
        r = (await conn.execute(select(table.c.limits).where(table.c.id == row_id))).first()
    if r is None:
        raise not_found(missing, f"no {param.removesuffix('_id')} {row_id!r}", param)
    stored: dict[str, Any] = json.loads(r[0] or "{}")
    return stored


async def set_limits(
    engine: AsyncEngine, table: Any, row_id: str, changes: dict[str, Any], missing: str, param: str
) -> dict[str, Any]:
    """Read-merge-write a row's ``limits`` JSON in one write transaction."""
    async with writer(engine).begin() as conn:
        r = (await conn.execute(select(table.c.limits).where(table.c.id == row_id))).first()
        if r is None:
            raise not_found(missing, f"no {param.removesuffix('_id')} {row_id!r}", param)
        merged = {**json.loads(r[0] or "{}"), **changes}
        merged = {k: v for k, v in merged.items() if v is not None}
        await conn.execute(
            update(table).where(table.c.id == row_id).values(limits=json.dumps(merged) if merged else None)
        )
    return merged


def x402_caller(payer: str) -> ApiKey:
    """The identity of an AI request paid for up front over x402: no customer
    account is charged (the payment was the charge), only ``inference`` allowed."""
    return ApiKey("x402", "x402", "", f"x402 payment from {payer}", ["inference"], 0, None, prepaid=True)
