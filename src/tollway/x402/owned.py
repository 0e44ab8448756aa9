"""Rules an agent made for hosts its wallet owns (``/v1/x402/rules``), kept in
``x402_agent_rules``. They are the same :class:`~tollway.x402.rules.Rule` as
the operator's, with what the agent may not choose fixed: the host is one
its wallet owns (checked by the API at create and update, and at the edge on
every request: a host that changed hands stops matching), ``payTo`` is the
wallet's address, the origin is the deployment serving the host, and the
payment settles to the wallet (``earnings.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, not_found
from tollway.core.ids import new_id
from tollway.core.schema import wallets as W
from tollway.core.schema import x402_agent_rules as T
from tollway.core.storage import writer
from tollway.x402.rules import Rule, Rules

# The origin an agent's rule records: the deployment serving its host, found
# at the edge per request (a rule names no URL of its own: no SSRF through it).
DEPLOYMENT_ORIGIN = "http://deployment"


@dataclass(frozen=True, slots=True)
class OwnedRule:
    id: str
    wallet_id: str
    account_id: str  # the wallet's ledger account: where its payments go
    rule: Rule
    created_at_us: int
    updated_at_us: int

    def to_dict(self) -> dict[str, Any]:
        body = self.rule.model_dump(exclude={"origin"})
        return {
            "object": "x402.rule",
            "id": self.id,
            "wallet_id": self.wallet_id,
            **body,
            "created_at_us": self.created_at_us,
            "updated_at_us": self.updated_at_us,
        }


_COLS = (T.c.id, T.c.wallet_id, W.c.account_id, T.c.body, T.c.created_at_us, T.c.updated_at_us)


def _owned(r: Any) -> OwnedRule:
    return OwnedRule(r[0], r[1], r[2], Rule.model_validate_json(r[3]), r[4], r[5])


def _taken(name: str) -> Exception:
    return conflict("rule_exists", f"this wallet already has a rule named {name!r}", "name")


class OwnedRuleStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def _select(self) -> Any:
        return select(*_COLS).select_from(T.join(W, W.c.id == T.c.wallet_id))

    async def version(self) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            n, last = (await conn.execute(select(func.count(), func.max(T.c.updated_at_us)))).one()
        return int(n), int(last or 0)

    async def load(self) -> list[OwnedRule]:
        async with self.engine.connect() as conn:
            return [_owned(r) for r in await conn.execute(self._select().order_by(T.c.created_at_us, T.c.id))]

    async def all(self, wallet_id: str) -> list[OwnedRule]:
        q = self._select().where(T.c.wallet_id == wallet_id).order_by(T.c.created_at_us, T.c.id)
        async with self.engine.connect() as conn:
            return [_owned(r) for r in await conn.execute(q)]

    async def get(self, rule_id: str, wallet_id: str) -> OwnedRule:
        """The wallet's rule; another wallet's is not found, exactly as a missing one."""
        async with self.engine.connect() as conn:
            r = (
                await conn.execute(self._select().where(T.c.id == rule_id, T.c.wallet_id == wallet_id))
            ).first()
        if r is None:
            raise not_found("rule_not_found", f"no rule {rule_id!r}", "rule_id")
        return _owned(r)

    async def create(self, wallet_id: str, rule: Rule) -> OwnedRule:
        now, rid = self.clock.now_us(), new_id("xr")
        row = {
            "id": rid,
            "wallet_id": wallet_id,
            "name": rule.name,
            "host": rule.host,
            "body": rule.model_dump_json(),
            "created_at_us": now,
            "updated_at_us": now,
        }
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(T), [row])
        except IntegrityError:
            raise _taken(rule.name) from None
        return await self.get(rid, wallet_id)

    async def replace(self, rule_id: str, wallet_id: str, rule: Rule) -> OwnedRule:
        await self.get(rule_id, wallet_id)
        values = {
            "name": rule.name,
            "host": rule.host,
            "body": rule.model_dump_json(),
            "updated_at_us": self.clock.now_us(),
        }
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(
                    update(T).where(T.c.id == rule_id, T.c.wallet_id == wallet_id).values(**values)
                )
        except IntegrityError:
            raise _taken(rule.name) from None
        return await self.get(rule_id, wallet_id)

    async def delete(self, rule_id: str, wallet_id: str) -> OwnedRule:
        rule = await self.get(rule_id, wallet_id)
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(T).where(T.c.id == rule_id, T.c.wallet_id == wallet_id))
        return rule


class Hosted:
    """Agents' rules by host and wallet, compiled: the edge's first-match lookup
    among the rules of the wallet that owns the host now (a rule left behind by
    a former owner neither matches nor hides the current owner's)."""

    def __init__(self, owned: list[OwnedRule]) -> None:
        grouped: dict[str, dict[str, list[OwnedRule]]] = {}
        for o in owned:
            grouped.setdefault(o.rule.host, {}).setdefault(o.wallet_id, []).append(o)
        self.owned = {o.id: o for o in owned}
        # In the compiled set a rule is named by its id (names are unique per wallet only).
        self.by_host = {
            h: {w: Rules([o.rule.model_copy(update={"name": o.id}) for o in rs]) for w, rs in ws.items()}
            for h, ws in grouped.items()
        }

    def __contains__(self, host: str) -> bool:
        return host in self.by_host

    def match(self, method: str, path: str, host: str, wallet_id: str) -> OwnedRule | None:
        rules = self.by_host.get(host, {}).get(wallet_id)
        rule = rules.match(method, path, host) if rules is not None else None
        return None if rule is None else self.owned[rule.name]
