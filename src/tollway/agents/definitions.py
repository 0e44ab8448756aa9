"""Versioned agent definitions: ``[[agents.definitions]]`` and the admin API
write versions; a version never changes once written, so each process
caches the ones it has read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.agents.spec import AgentSpec
from tollway.core.clock import Clock
from tollway.core.errors import invalid, not_found
from tollway.core.schema import agent_versions as V
from tollway.core.storage import writer


def canonical(spec: AgentSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def parse(body: Any, name: str | None = None) -> AgentSpec:
    """A definition from an API body; a bad one is a 400 naming the field."""
    if not isinstance(body, dict):
        raise invalid("invalid_body", "the body is a JSON object", "body")
    if name is not None:
        if body.get("name", name) != name:
            raise invalid("name_mismatch", "the body's name differs from the path's", "name")
        body = {**body, "name": name}
    try:
        return AgentSpec.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        code = "unknown_parameter" if err["type"] == "extra_forbidden" else "invalid_agent"
        if err["type"] == "missing":
            code = "missing_parameter"
        raise invalid(code, f"{param}: {err['msg']}" if param else str(err["msg"]), param) from None


class Registry:
    def __init__(self, engine: AsyncEngine, clock: Clock, configured: list[AgentSpec]) -> None:
        self.engine = engine
        self.clock = clock
        self.configured = configured
        self._cache: dict[tuple[str, int], AgentSpec] = {}
        self._synced = False
        self._sync_lock = asyncio.Lock()

    async def sync(self) -> None:
        """Write a new version of each configured agent whose definition changed."""
        async with self._sync_lock:
            if self._synced:
                return
            for spec in self.configured:
                await self._put(spec, "config", only_if_changed=True)
            self._synced = True

    async def put(self, spec: AgentSpec, *, only_if_changed: bool = True) -> dict[str, Any]:
        """A new version (or, unchanged, the latest one): ``{agent, version, created}``."""
        await self.sync()  # the configured versions come first
        return await self._put(spec, "api", only_if_changed=only_if_changed)

    async def _put(self, spec: AgentSpec, source: str, *, only_if_changed: bool) -> dict[str, Any]:
        body = canonical(spec)
        for _ in range(5):
            try:
                async with writer(self.engine).begin() as conn:
                    row = (
                        await conn.execute(
                            select(V.c.version, V.c.body)
                            .where(V.c.agent == spec.name)
                            .order_by(V.c.version.desc())
                            .limit(1)
                        )
                    ).first()
                    if row is not None and only_if_changed and row.body == body:
                        return {"agent": spec.name, "version": row.version, "created": False}
                    version = 1 if row is None else row.version + 1
                    await conn.execute(
                        V.insert().values(
                            agent=spec.name,
                            version=version,
                            body=body,
                            source=source,
                            created_at_us=self.clock.now_us(),
                        )
                    )
            except IntegrityError:  # another process wrote this version first: read again
                continue
            self._cache[(spec.name, version)] = spec
            return {"agent": spec.name, "version": version, "created": True}
        raise invalid("agent_busy", "the definition is being changed concurrently; try again", "name")

    async def latest(self, name: str) -> tuple[int, AgentSpec]:
        await self.sync()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(V.c.version, V.c.body)
                    .where(V.c.agent == name)
                    .order_by(V.c.version.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            raise not_found("agent_not_found", f"no agent {name!r}", "agent")
        return row.version, self._cached(name, row.version, row.body)

    async def get(self, name: str, version: int) -> AgentSpec:
        spec = self._cache.get((name, version))
        if spec is not None:
            return spec
        async with self.engine.connect() as conn:
            body = (
                await conn.execute(select(V.c.body).where(V.c.agent == name, V.c.version == version))
            ).scalar()
        if body is None:
            raise not_found("agent_not_found", f"no agent {name!r} version {version}", "agent")
        return self._cached(name, version, body)

    def _cached(self, name: str, version: int, body: str) -> AgentSpec:
        spec = self._cache.get((name, version))
        if spec is None:
            spec = AgentSpec.model_validate_json(body)
            self._cache[(name, version)] = spec
        return spec

    async def agents(self) -> list[dict[str, Any]]:
        await self.sync()
        latest = select(V.c.agent, func.max(V.c.version).label("version")).group_by(V.c.agent).subquery()
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(V.c.agent, V.c.version, V.c.body, V.c.source, V.c.created_at_us)
                    .join(latest, (V.c.agent == latest.c.agent) & (V.c.version == latest.c.version))
                    .order_by(V.c.agent)
                )
            ).all()
        return [_row(r) for r in rows]

    async def versions(self, name: str) -> list[dict[str, Any]]:
        await self.sync()
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(V.c.agent, V.c.version, V.c.body, V.c.source, V.c.created_at_us)
                    .where(V.c.agent == name)
                    .order_by(V.c.version)
                )
            ).all()
        if not rows:
            raise not_found("agent_not_found", f"no agent {name!r}", "agent")
        return [_row(r) for r in rows]


def _row(r: Any) -> dict[str, Any]:
    return {
        "object": "agent",
        "name": r.agent,
        "version": r.version,
        "source": r.source,
        "created_at_us": r.created_at_us,
        "definition": json.loads(r.body),
    }
