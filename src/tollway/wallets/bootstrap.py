"""Bootstrap credentials: what an owner hands a new agent so it can ask for
its budget, and nothing else.

A bootstrap credential (``tw_boot_<prefix>_<secret>``) belongs to one wallet,
is shown once and stored as a SHA-256 hash, expires, and can be revoked. It
only creates budget requests for its wallet and reads their status
(:mod:`tollway.wallets.budget`): it is not an agent token, so every spending
route refuses it (``invalid_agent_token``, 401).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, forbidden, invalid, not_found, unauthenticated
from tollway.core.ids import new_id
from tollway.core.schema import wallet_bootstraps as B
from tollway.core.storage import writer
from tollway.identity.keys import random_string, sha256_hex
from tollway.wallets.audit import Audit
from tollway.wallets.store import Wallets

PREFIX = "tw_boot_"
_CREDENTIAL = re.compile(r"^tw_boot_([a-z0-9]{12})_([a-z0-9]{32})$")
_INVALID = "invalid bootstrap credential (tw_boot_…)"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    id: str
    wallet_id: str
    prefix: str
    name: str
    created_at_us: int
    expires_at_us: int
    revoked_at_us: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "wallet_bootstrap",
            "id": self.id,
            "wallet_id": self.wallet_id,
            "prefix": self.prefix,
            "name": self.name,
            "created_at_us": self.created_at_us,
            "expires_at_us": self.expires_at_us,
            "revoked": self.revoked_at_us is not None,
        }


_COLS = (B.c.id, B.c.wallet_id, B.c.prefix, B.c.name, B.c.created_at_us, B.c.expires_at_us, B.c.revoked_at_us)


class Bootstraps:
    def __init__(self, engine: AsyncEngine, clock: Clock, wallets: Wallets, audit: Audit, ttl_s: int) -> None:
        self.engine, self.clock, self.wallets, self.audit = engine, clock, wallets, audit
        self.ttl_s = ttl_s

    async def create(
        self, wallet_id: str, *, name: str = "", expires_in_seconds: int | None = None, actor: str = "admin"
    ) -> tuple[Bootstrap, str]:
        """A new credential for ``wallet_id``; returns it and its secret (shown once)."""
        if not isinstance(name, str) or len(name) > 200:
            raise invalid("invalid_name", "name is at most 200 characters", "name")
        ttl = self.ttl_s if expires_in_seconds is None else expires_in_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= 90 * 86_400:
            raise invalid(
                "invalid_expires_in_seconds", "expires_in_seconds is from 60 to 7776000", "expires_in_seconds"
            )
        w = await self.wallets.get(wallet_id)
        prefix = random_string(12)
        secret = f"{PREFIX}{prefix}_{random_string(32)}"
        now = self.clock.now_us()
        b = Bootstrap(new_id("wbs"), w.id, prefix, name, now, now + ttl * 1_000_000, None)
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                insert(B),
                [
                    {
                        "id": b.id,
                        "wallet_id": b.wallet_id,
                        "prefix": prefix,
                        "secret_hash": sha256_hex(secret),
                        "name": name,
                        "created_at_us": now,
                        "expires_at_us": b.expires_at_us,
                        "revoked_at_us": None,
                    }
                ],
            )
        await self.audit.write(
            [
                self.audit.row(
                    w.id, "bootstrap_created", actor=actor, bootstrap_id=b.id, expires_at_us=b.expires_at_us
                )
            ]
        )
        return b, secret

    async def all(self, wallet_id: str) -> list[Bootstrap]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(*_COLS).where(B.c.wallet_id == wallet_id).order_by(B.c.id))
            return [Bootstrap(*r) for r in rows]

    async def get(self, bootstrap_id: str) -> Bootstrap:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_COLS).where(B.c.id == bootstrap_id))).first()
        if r is None:
            raise not_found(
                "bootstrap_not_found", f"no bootstrap credential {bootstrap_id!r}", "bootstrap_id"
            )
        return Bootstrap(*r)

    async def revoke(self, bootstrap_id: str, actor: str = "admin") -> Bootstrap:
        b = await self.get(bootstrap_id)
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                update(B)
                .where(B.c.id == bootstrap_id, B.c.revoked_at_us.is_(None))
                .values(revoked_at_us=self.clock.now_us())
            )
        if not r.rowcount:
            raise conflict(
                "bootstrap_revoked", f"bootstrap credential {bootstrap_id!r} is already revoked", None
            )
        await self.audit.write(
            [self.audit.row(b.wallet_id, "bootstrap_revoked", actor=actor, bootstrap_id=b.id)]
        )
        return await self.get(bootstrap_id)

    async def verify(self, presented: str) -> Bootstrap:
        """The live credential presented: 401 if unknown, 403 if revoked or expired."""
        m = _CREDENTIAL.match(presented) if isinstance(presented, str) else None
        if m is None:
            raise unauthenticated("invalid_bootstrap_credential", _INVALID)
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(*_COLS, B.c.secret_hash).where(B.c.prefix == m.group(1)))).first()
        if r is None or not hmac.compare_digest(r[7], sha256_hex(presented)):
            raise unauthenticated("invalid_bootstrap_credential", _INVALID)
        b = Bootstrap(*r[:7])
        if b.revoked_at_us is not None:
            raise forbidden("bootstrap_revoked", "this bootstrap credential was revoked")
        if b.expires_at_us <= self.clock.now_us():
            raise forbidden("bootstrap_expired", "this bootstrap credential has expired")
        return b
