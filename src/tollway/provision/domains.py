"""Domains and their DNS zones: availability and quotes, registration and
renewal behind the trademark guard, records, zone files, and teardown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError, conflict, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import provision_domains as D
from tollway.core.schema import provision_overrides as O
from tollway.core.schema import provision_records as R
from tollway.core.storage import writer
from tollway.provision import dns
from tollway.provision.config import ProvisionConfig
from tollway.provision.names import registrable, to_ascii, to_unicode, within
from tollway.provision.providers.base import Provider
from tollway.provision.purchase import Purchases, idempotency
from tollway.provision.trademark import Guard, Match
from tollway.wallets.audit import Audit
from tollway.wallets.authorize import Decision
from tollway.wallets.store import Wallets

YEAR_US = 365 * 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Domain:
    id: str
    name: str
    provider: str
    wallet_id: str
    renew_price: int
    expires_at_us: int
    created_at_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "domain",
            "id": self.id,
            "name": self.name,
            "unicode": to_unicode(self.name),
            "provider": self.provider,
            "wallet_id": self.wallet_id,
            "renew_price": self.renew_price,
            "expires_at_us": self.expires_at_us,
            "created_at_us": self.created_at_us,
        }


def _domain(r: Any) -> Domain:
    return Domain(r.id, r.name, r.provider, r.wallet_id, r.renew_price, r.expires_at_us, r.created_at_us)


def _record(r: Any) -> dns.Record:
    return dns.Record(r.name, r.type, r.content, r.ttl, r.priority, r.id)


def _years(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
        raise invalid("invalid_years", "years is an integer from 1 to 10", "years")
    return v


class Domains:
    def __init__(
        self,
        cfg: ProvisionConfig,
        engine: AsyncEngine,
        clock: Clock,
        wallets: Wallets,
        audit: Audit,
        provider: Provider,
        purchases: Purchases,
    ) -> None:
        self.cfg, self.engine, self.clock = cfg, engine, clock
        self.wallets, self.audit, self.provider, self.purchases = wallets, audit, provider, purchases
        self.guard = Guard(cfg.trademarks)
        self.on_change: list[Any] = []  # callbacks when records change (the edge's routes)

    # ---------------------------------------------------------------- reads

    async def get(self, name: str, wallet_id: str | None = None) -> Domain:
        n = to_ascii(name, "domain")
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(D).where(D.c.name == n, D.c.status == "active"))).first()
        if r is None or (wallet_id is not None and r.wallet_id != wallet_id):
            raise not_found("domain_not_found", f"no domain {n!r} here", "domain")
        return _domain(r)

    async def all(self, wallet_id: str | None = None) -> list[Domain]:
        q = select(D).where(D.c.status == "active").order_by(D.c.name)
        if wallet_id is not None:
            q = q.where(D.c.wallet_id == wallet_id)
        async with self.engine.connect() as conn:
            return [_domain(r) for r in await conn.execute(q)]

    async def records(self, zone: str) -> list[dns.Record]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(R).where(R.c.zone == zone).order_by(R.c.name, R.c.id))
            return [_record(r) for r in rows]

    # ------------------------------------------------------- the trademark guard

    async def blocked(self, name: str, wallet_id: str | None) -> tuple[Match | None, bool]:
        """The mark ``name`` matches (if any), and whether an override lets this wallet buy it."""
        m = self.guard.check(name)
        if m is None or wallet_id is None:
            return m, False
        async with self.engine.connect() as conn:
            q = select(O.c.id).where(O.c.name == name, O.c.wallet_id == wallet_id)
            return m, (await conn.execute(q)).first() is not None

    async def override(self, name: object, wallet_id: str, actor: str, reason: str) -> dict[str, Any]:
        """An operator lets ``wallet_id`` buy ``name`` despite the guard (audited)."""
        n, _ = registrable(name, set(self.cfg.tlds))
        await self.wallets.get(wallet_id)
        m = self.guard.check(n)
        row = {
            "id": new_id("povr"),
            "name": n,
            "wallet_id": wallet_id,
            "actor": actor,
            "reason": reason,
            "created_at_us": self.clock.now_us(),
        }
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(O), [row])
        except IntegrityError:
            raise conflict("override_exists", f"{n} is already allowed for {wallet_id}", "domain") from None
        detail = {
            "domain": n,
            "mark": m.mark if m else None,
            "match": m.reason if m else None,
            "reason": reason,
        }
        await self.audit.write([self.audit.row(wallet_id, "trademark_override", actor=actor, **detail)])
        return {"object": "trademark_override", **row, "mark": detail["mark"], "match": detail["match"]}

    async def overrides(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(O).order_by(O.c.id.desc()))
            return [{"object": "trademark_override", **r._asdict()} for r in rows]

    # --------------------------------------------------------------- domains

    async def check(self, presented: str, name: object) -> dict[str, Any]:
        _, wallet = await self.wallets.verify(presented)
        return await self.verdict(name, wallet.id)

    async def verdict(self, name: object, wallet_id: str | None) -> dict[str, Any]:
        """Availability, price and the trademark guard's verdict (with this wallet's overrides)."""
        n, tld = registrable(name, set(self.cfg.tlds))
        q = await self.provider.quote(n, tld)
        available, reason = q.available, q.reason
        async with self.engine.connect() as conn:
            if (await conn.execute(select(D.c.id).where(D.c.name == n))).first() is not None:
                available, reason = False, "already registered"
        m, allowed = await self.blocked(n, wallet_id)
        out: dict[str, Any] = {
            "object": "domain_check",
            "domain": n,
            "unicode": to_unicode(n),
            "available": available and (m is None or allowed),
            "price": q.register,
            "renew_price": q.renew,
            "currency": "usd",
            "reason": reason,
            "blocked": None,
        }
        if m is not None:
            out["blocked"] = {
                "mark": m.mark,
                "match": m.reason,
                "message": m.message(),
                "overridden": allowed,
            }
            if not allowed:
                out["reason"] = "trademark"
        return out

    async def register(
        self, presented: str, name: object, years: object = 1, idempotency_key: object = None
    ) -> dict[str, Any]:
        token, wallet = await self.wallets.verify(presented)
        n, tld = registrable(name, set(self.cfg.tlds))
        y = _years(years)
        key = idempotency(idempotency_key)
        m, allowed = await self.blocked(n, wallet.id)
        if m is not None and not allowed:
            await self.audit.write(
                [self.audit.row(wallet.id, "trademark_blocked", token_id=token.id, actor="agent",
                                domain=n, mark=m.mark, match=m.reason)]
            )  # fmt: skip
            raise TollwayError(
                ErrorType.PERMISSION,
                "trademark_blocked",
                f"{n} is blocked: {m.message()} ({m.reason}); an operator can override it",
                "domain",
            )
        q = await self.provider.quote(n, tld)
        if not q.available:
            raise conflict("domain_unavailable", f"{n} is not available: {q.reason}", "domain")
        async with self.engine.connect() as conn:
            taken = (await conn.execute(select(D.c.wallet_id).where(D.c.name == n))).first()
        if taken is not None and taken[0] != wallet.id:  # the same wallet: maybe a retry (replayed)
            raise conflict("domain_unavailable", f"{n} is already registered", "domain")

        async def work(d: Decision) -> dict[str, Any]:
            await self.provider.register(n, y)
            now = self.clock.now_us()
            row = {
                "id": new_id("dom"),
                "name": n,
                "provider": self.provider.name,
                "wallet_id": wallet.id,
                "status": "active",
                "renew_price": q.renew,
                "authorization_id": d.id,
                "expires_at_us": now + y * YEAR_US,
                "created_at_us": now,
                "updated_at_us": now,
            }
            try:
                async with writer(self.engine).begin() as conn:
                    await conn.execute(insert(D), [row])
            except IntegrityError:
                raise conflict("domain_unavailable", f"{n} was registered meanwhile", "domain") from None
            if m is not None:
                await self.audit.write(
                    [self.audit.row(wallet.id, "trademark_override_used", token_id=token.id, actor="agent",
                                    authorization_id=d.id, domain=n, mark=m.mark)]
                )  # fmt: skip
            return {**_domain(_Row(row)).to_dict(), "charged": q.register * y, "authorization_id": d.id}

        async def replay(d: Decision) -> dict[str, Any]:
            dom = await self.get(n, wallet.id)
            return {**dom.to_dict(), "charged": d.captured, "authorization_id": d.id}

        return await self.purchases.buy(
            presented, wallet_id=wallet.id, request={"op": "domain.register", "domain": n, "years": y},
            amount=q.register * y, category="domains", key=key,
            memo=f"register {n} for {y}y", work=work, replay=replay,
        )  # fmt: skip

    async def renew(
        self, presented: str, name: str, years: object = 1, idempotency_key: object = None
    ) -> dict[str, Any]:
        _, wallet = await self.wallets.verify(presented)
        dom = await self.get(name, wallet.id)
        y = _years(years)
        key = idempotency(idempotency_key)

        async def work(d: Decision) -> dict[str, Any]:
            await self.provider.renew(dom.name, y)
            until = dom.expires_at_us + y * YEAR_US
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    update(D)
                    .where(D.c.id == dom.id)
                    .values(expires_at_us=until, authorization_id=d.id, updated_at_us=self.clock.now_us())
                )
            out = await self.get(dom.name)
            return {**out.to_dict(), "charged": dom.renew_price * y, "authorization_id": d.id}

        async def replay(d: Decision) -> dict[str, Any]:
            return {**(await self.get(dom.name)).to_dict(), "charged": d.captured, "authorization_id": d.id}

        return await self.purchases.buy(
            presented, wallet_id=wallet.id, request={"op": "domain.renew", "domain": dom.name, "years": y},
            amount=dom.renew_price * y, category="domains", key=key,
            memo=f"renew {dom.name} for {y}y", work=work, replay=replay,
        )  # fmt: skip

    async def teardown(self, dom: Domain) -> None:
        """Delete the domain's records and give the name back (no refund)."""
        for r in await self.records(dom.name):
            await self.provider.delete_record(dom.name, r.id)
        await self.provider.release_domain(dom.name)
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(R).where(R.c.zone == dom.name))
            await conn.execute(delete(D).where(D.c.id == dom.id))
        self._changed()

    # ------------------------------------------------------------------- DNS

    async def zone_of(self, presented: str, zone: str) -> tuple[str, Domain]:
        _, wallet = await self.wallets.verify(presented)
        return wallet.id, await self.get(zone, wallet.id)

    async def create_record(
        self,
        presented: str,
        zone: str,
        body: dict[str, Any],
        idempotency_key: object = None,
        purpose: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add a record (category dns). ``purpose``: what else the idempotency
        key covers (a hostname binding names its deployment)."""
        wallet_id, dom = await self.zone_of(presented, zone)
        rec = dns.record(dom.name, body)
        key = idempotency(idempotency_key)
        if key is None:  # with a key, a retry finds its own record: checked once the key is claimed
            dns.check_exclusive(dom.name, rec, await self.records(dom.name))
        request = {
            "op": "dns.create", "zone": dom.name, "name": rec.name, "type": rec.type, "content": rec.content,
            "ttl": rec.ttl, "priority": rec.priority, **(purpose or {}),
        }  # fmt: skip

        async def work(d: Decision) -> dict[str, Any]:
            dns.check_exclusive(dom.name, rec, await self.records(dom.name))
            ref = await self.provider.create_record(dom.name, rec)
            row = {
                "id": new_id("rec"), "zone": dom.name, "name": rec.name, "type": rec.type,
                "content": rec.content, "ttl": rec.ttl, "priority": rec.priority, "provider_ref": ref,
                "wallet_id": wallet_id, "authorization_id": d.id, "created_at_us": self.clock.now_us(),
            }  # fmt: skip
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(R), [row])
            self._changed()
            out = _record(_Row(row)).to_dict()
            return {**out, "zone": dom.name, "charged": self.cfg.dns_record_price, "authorization_id": d.id}

        async def replay(d: Decision) -> dict[str, Any]:
            async with self.engine.connect() as conn:
                r = (await conn.execute(select(R).where(R.c.authorization_id == d.id))).first()
            if r is None:
                raise not_found("record_not_found", "the record bought with this key was deleted", "id")
            return {**_record(r).to_dict(), "zone": dom.name, "charged": d.captured, "authorization_id": d.id}

        return await self.purchases.buy(
            presented, wallet_id=wallet_id, request=request,
            amount=self.cfg.dns_record_price, category="dns", key=key,
            memo=f"dns {rec.type} {rec.name}", work=work, replay=replay,
        )  # fmt: skip

    async def delete_record(self, presented: str, zone: str, record_id: str) -> dict[str, Any]:
        _, dom = await self.zone_of(presented, zone)
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(R).where(R.c.id == record_id, R.c.zone == dom.name))).first()
        if r is None:
            raise not_found("record_not_found", f"no record {record_id!r} in {dom.name}", "record_id")
        await self.provider.delete_record(dom.name, r.provider_ref)
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(R).where(R.c.id == record_id))
        self._changed()
        return {**_record(r).to_dict(), "deleted": True}

    async def zone_file(self, zone: str) -> str:
        recs = await self.records(zone)
        return dns.zone_file(
            zone, recs, ns=f"ns1.{self.cfg.apps_domain}", serial=self.clock.now_us() // 1_000_000
        )

    def _changed(self) -> None:
        for fn in self.on_change:
            fn()


class _Row:
    def __init__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


def in_zone(name: str, zones: list[Domain]) -> Domain | None:
    for z in zones:
        if within(name, z.name):
            return z
    return None
