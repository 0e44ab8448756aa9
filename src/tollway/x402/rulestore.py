"""Paid-route rules imported through the admin API, kept in the database."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import x402_rules as T
from tollway.core.storage import writer
from tollway.x402.rules import Rule


class RuleStore:
    """Imported rules in the database (table ``x402_rules``): when there are
    any, they replace the config's; every process re-reads them when they change."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def version(self) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            n, last = (await conn.execute(select(func.count(), func.max(T.c.updated_at_us)))).one()
        return int(n), int(last or 0)

    async def load(self) -> list[Rule]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(T.c.body).order_by(T.c.position))
            return [Rule.model_validate_json(r[0]) for r in rows]

    async def replace(self, rules: list[Rule]) -> None:
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            await conn.execute(delete(T))
            if rules:
                await conn.execute(
                    insert(T),
                    [
                        {"name": r.name, "position": i, "body": r.model_dump_json(), "updated_at_us": now}
                        for i, r in enumerate(rules)
                    ],
                )
