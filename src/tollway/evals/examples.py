"""Labelled examples: each person's reply to an escalation, with the
conversation before it, kept (``eval_examples``) and exported as JSONL in
OpenAI's fine-tuning chat format (``{"messages": [...]}`` per line)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.agents.service import Agents
from tollway.core.clock import Clock
from tollway.core.schema import agent_escalations as E
from tollway.core.schema import agent_sessions as S
from tollway.core.schema import eval_examples as X
from tollway.core.storage import writer
from tollway.observe.alerts import insert_or_skip

log = logging.getLogger("tollway.evals")


def chat(system: str, messages: list[dict[str, Any]], escalation_id: str) -> list[dict[str, Any]] | None:
    """The conversation up to the person's reply to ``escalation_id``, as chat
    messages: the reply is the last assistant message; the agent's hand-over
    notice is left out (the reply is what it should have said)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        meta = m.get("meta") or {}
        if m["role"] == "human":
            if meta.get("escalation") == escalation_id:
                return [*out, {"role": "assistant", "content": m["content"]}]
            out.append({"role": "assistant", "content": m["content"]})
        elif m["role"] == "assistant" and meta.get("escalation"):
            continue
        elif m["role"] in ("user", "assistant"):
            out.append({"role": m["role"], "content": m["content"]})
    return None


class Examples:
    def __init__(self, engine: AsyncEngine, clock: Clock, agents: Agents, operator: str) -> None:
        self.operator = operator  # its sessions are eval replays: no person answered them
        self.engine = engine
        self.clock = clock
        self.agents = agents

    async def harvest(self, agent: str | None = None) -> int:
        """Keep every answered escalation not kept yet; returns how many were kept."""
        q = (
            select(E.c.id, E.c.agent, E.c.session_id, S.c.version)
            .join(S, (S.c.agent == E.c.agent) & (S.c.id == E.c.session_id))
            .where(
                E.c.status == "answered",
                E.c.customer_id != self.operator,
                ~select(X.c.id).where(X.c.id == E.c.id).exists(),
            )
        )
        if agent is not None:
            q = q.where(E.c.agent == agent)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.limit(1000))).all()
        kept = 0
        for r in rows:
            store = self.agents.store
            msgs = [
                {"role": m.role, "content": m.content, "meta": m.meta}
                for m in await store.messages(r.agent, r.session_id, limit=10_000)
            ]
            spec = await self.agents.registry.get(r.agent, r.version)
            conversation = chat(spec.system_prompt, msgs, r.id)
            if conversation is None:  # its messages were purged (memory.ttl_seconds)
                continue
            values = {
                "id": r.id,
                "agent": r.agent,
                "session_id": r.session_id,
                "version": r.version,
                "messages": json.dumps(conversation),
                "created_at_us": self.clock.now_us(),
            }
            async with writer(self.engine).begin() as conn:
                kept += (await conn.execute(insert_or_skip(conn, X, values, ["id"]))).rowcount
        return kept

    async def run(self, interval_s: float) -> None:
        """Harvest every ``interval_s`` (the server's background loop)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.harvest()
            except Exception:  # a database hiccup: the next round harvests
                log.exception("keeping escalation answers as examples failed")

    async def export(self, agent: str | None = None, *, limit: int = 100_000) -> list[dict[str, Any]]:
        """The kept examples, oldest first, as fine-tuning lines (harvested first)."""
        await self.harvest(agent)
        q = select(X.c.messages).order_by(X.c.created_at_us, X.c.id).limit(limit)
        if agent is not None:
            q = q.where(X.c.agent == agent)
        async with self.engine.connect() as conn:
            return [{"messages": json.loads(r.messages)} for r in await conn.execute(q)]
