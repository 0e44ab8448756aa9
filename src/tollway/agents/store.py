"""Sessions in the database: their row, messages, tool log and escalations.

A turn is written by :meth:`Store.commit` in one transaction (its messages,
tool calls, counters, an escalation): after a crash it is fully recorded or
absent. Only the session's single writer (tollway.agents.writer) calls it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import conflict, invalid, not_found
from tollway.core.schema import agent_escalations as E
from tollway.core.schema import agent_messages as M
from tollway.core.schema import agent_sessions as S
from tollway.core.schema import agent_tool_log as T
from tollway.core.storage import writer

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,114}$")  # 115 + "~" + 12 = the column's 128


def scoped(customer_id: str, session_id: str) -> str:
    """The stored id of a customer's session ``session_id``: each customer names its
    sessions in its own namespace, so another customer's ids neither collide with
    nor reveal its own (a session id taken elsewhere is simply free here)."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=6).hexdigest()
    return f"{session_id}~{digest}"


def _like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def public(stored_id: str) -> str:
    """The id the customer chose (``~`` is not in :data:`SESSION_ID`'s alphabet)."""
    return stored_id.rsplit("~", 1)[0]


COUNTERS = ("input_tokens", "output_tokens", "mneurons", "cost", "latency_us", "tool_calls", "retrievals")


@dataclass(slots=True)
class Message:
    seq: int
    turn: int
    role: str  # user | assistant | human
    content: str
    meta: dict[str, Any]
    created_at_us: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "turn": self.turn,
            "role": self.role,
            "content": self.content,
            **self.meta,
            "created_at_us": self.created_at_us,
        }


@dataclass(slots=True)
class Session:
    agent: str
    id: str
    customer_id: str
    version: int
    status: str
    turns: int
    next_seq: int
    summary: str
    summary_through: int
    state: dict[str, Any]
    counters: dict[str, int]
    created_at_us: int
    updated_at_us: int
    recent: list[Message] = field(default_factory=list)  # the messages not in the summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "agent.session",
            "agent": self.agent,
            "id": public(self.id),
            "version": self.version,
            "status": self.status,
            "turns": self.turns,
            "summary": self.summary,
            "state": self.state,
            "usage": dict(self.counters),
            "created_at_us": self.created_at_us,
            "updated_at_us": self.updated_at_us,
        }


@dataclass(slots=True)
class ToolCall:
    """One call of a tool within a turn, as logged."""

    id: str
    step: int
    tool: str
    arguments: dict[str, Any]
    request: dict[str, Any]
    response: str
    status: str  # ok | error | invalid | timeout | refused
    error: str | None
    latency_us: int
    cost: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "tool": self.tool,
            "arguments": self.arguments,
            "request": self.request,
            "response": self.response,
            "status": self.status,
            "error": self.error,
            "latency_us": self.latency_us,
            "cost": self.cost,
        }


@dataclass(slots=True)
class Turn:
    """What one turn adds to a session, written at once."""

    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (role, content, meta)
    tool_calls: list[ToolCall] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    state: dict[str, Any] | None = None
    summary: tuple[str, int] | None = None  # (new summary, summary_through)
    status: str | None = None
    escalation: dict[str, Any] | None = None  # {id, reason, detail}
    answers: tuple[str, str] | None = None  # (escalation id, who): the human reply this turn carries


class Store:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def create(self, agent: str, session_id: str, customer_id: str, version: int) -> Session:
        now = self.clock.now_us()
        row = {
            "agent": agent,
            "id": session_id,
            "customer_id": customer_id,
            "version": version,
            "status": "active",
            "turns": 0,
            "next_seq": 1,
            "summary": "",
            "summary_through": 1,
            "state": "{}",
            **dict.fromkeys(COUNTERS, 0),
            "created_at_us": now,
            "updated_at_us": now,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(S.insert().values(**row))
        except IntegrityError:
            raise conflict("session_exists", f"session {public(session_id)!r} exists", "id") from None
        return _session(row)

    async def find(self, agent: str, session_id: str) -> str:
        """An operator's look-up: the stored id of the session a customer calls
        ``session_id`` (a stored id is taken as it is); 404 if none, 409 if
        several customers use that id."""
        async with self.engine.connect() as conn:
            if "~" in session_id:
                q = select(S.c.id).where(S.c.agent == agent, S.c.id == session_id)
            else:
                q = select(S.c.id).where(
                    S.c.agent == agent, S.c.id.like(f"{_like(session_id)}~%", escape="\\")
                )
            found = (await conn.execute(q.limit(2))).scalars().all()
        if not found:
            raise not_found("session_not_found", f"no session {session_id!r} of agent {agent!r}", "id")
        if len(found) > 1:
            raise conflict(
                "session_ambiguous",
                f"customers share the session id {session_id!r}: name it by its stored id ({found[0]}, …)",
                "id",
            )
        return str(found[0])

    async def version_of(self, agent: str, session_id: str, customer_id: str | None) -> int:
        """The definition version a session runs; 404 if absent (or another customer's)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(S.c.version, S.c.customer_id).where(S.c.agent == agent, S.c.id == session_id)
                )
            ).first()
        if row is None or (customer_id is not None and row.customer_id != customer_id):
            raise not_found(
                "session_not_found", f"no session {public(session_id)!r} of agent {agent!r}", "id"
            )
        return int(row.version)

    async def load(self, agent: str, session_id: str, customer_id: str | None) -> Session:
        """The session with its messages not yet summarized; 404 if absent (or another customer's)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(S).where(S.c.agent == agent, S.c.id == session_id))).first()
            if row is None or (customer_id is not None and row.customer_id != customer_id):
                raise not_found(
                    "session_not_found", f"no session {public(session_id)!r} of agent {agent!r}", "id"
                )
            s = _session(row._asdict())
            rows = (
                await conn.execute(
                    select(M.c.seq, M.c.turn, M.c.role, M.c.content, M.c.meta, M.c.created_at_us)
                    .where(M.c.agent == agent, M.c.session_id == session_id, M.c.seq >= s.summary_through)
                    .order_by(M.c.seq)
                )
            ).all()
        s.recent = [
            Message(r.seq, r.turn, r.role, r.content, json.loads(r.meta), r.created_at_us) for r in rows
        ]
        return s

    async def commit(self, s: Session, turn: Turn) -> list[Message]:
        """Write the turn; ``s`` is updated to match. Returns the messages it added."""
        now = self.clock.now_us()
        added: list[Message] = []
        seq = s.next_seq
        for role, content, meta in turn.messages:
            added.append(Message(seq, s.turns + 1, role, text(content), meta, now))
            seq += 1
        values: dict[str, Any] = {
            "turns": s.turns + 1,
            "next_seq": seq,
            "updated_at_us": now,
            **{k: getattr(S.c, k) + v for k, v in turn.counters.items() if v},
        }
        if turn.state is not None:
            values["state"] = json.dumps(turn.state)
        if turn.summary is not None:
            values["summary"], values["summary_through"] = turn.summary
        if turn.status is not None:
            values["status"] = turn.status
        async with writer(self.engine).begin() as conn:
            if added:
                await conn.execute(
                    M.insert(),
                    [
                        {
                            "agent": s.agent,
                            "session_id": s.id,
                            "seq": m.seq,
                            "turn": m.turn,
                            "role": m.role,
                            "content": m.content,
                            "meta": json.dumps(m.meta),
                            "created_at_us": now,
                        }
                        for m in added
                    ],
                )
            if turn.tool_calls:
                await conn.execute(
                    T.insert(),
                    [
                        {
                            "id": c.id,
                            "agent": s.agent,
                            "session_id": s.id,
                            "turn": s.turns + 1,
                            "step": c.step,
                            "tool": c.tool,
                            "arguments": json.dumps(c.arguments),
                            "request": json.dumps(c.request),
                            "response": text(c.response),
                            "status": c.status,
                            "error": c.error,
                            "latency_us": c.latency_us,
                            "cost": c.cost,
                            "created_at_us": now,
                        }
                        for c in turn.tool_calls
                    ],
                )
            if turn.escalation is not None:
                await conn.execute(
                    E.insert().values(
                        agent=s.agent,
                        session_id=s.id,
                        customer_id=s.customer_id,
                        status="open",
                        created_at_us=now,
                        **{k: text(v) for k, v in turn.escalation.items()},
                    )
                )
            if turn.answers is not None:
                esc_id, by = turn.answers
                done = await conn.execute(
                    update(E)
                    .where(E.c.id == esc_id, E.c.status == "open")
                    .values(
                        status="answered",
                        answer=added[0].content if added else "",
                        answered_by=by,
                        answered_at_us=now,
                    )
                )
                if done.rowcount != 1:
                    raise conflict("escalation_answered", f"escalation {esc_id} is already answered", "id")
            await conn.execute(update(S).where(S.c.agent == s.agent, S.c.id == s.id).values(**values))
        s.turns += 1
        s.next_seq = seq
        s.updated_at_us = now
        for k, v in turn.counters.items():
            s.counters[k] = s.counters.get(k, 0) + v
        if turn.state is not None:
            s.state = turn.state
        if turn.status is not None:
            s.status = turn.status
        s.recent.extend(added)
        if turn.summary is not None:
            s.summary, s.summary_through = turn.summary
            s.recent = [m for m in s.recent if m.seq >= s.summary_through]
        return added

    async def set_state(self, s: Session, state: dict[str, Any]) -> None:
        """Replace the session's key-value state (its single writer holds the session)."""
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(S)
                .where(S.c.agent == s.agent, S.c.id == s.id)
                .values(state=json.dumps(state), updated_at_us=now)
            )
        s.state, s.updated_at_us = state, now

    # ------------------------------------------------------------------ reads

    async def messages(
        self, agent: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Message]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(M.c.seq, M.c.turn, M.c.role, M.c.content, M.c.meta, M.c.created_at_us)
                    .where(M.c.agent == agent, M.c.session_id == session_id, M.c.seq > after)
                    .order_by(M.c.seq)
                    .limit(limit)
                )
            ).all()
        return [Message(r.seq, r.turn, r.role, r.content, json.loads(r.meta), r.created_at_us) for r in rows]

    async def tool_log(self, agent: str, session_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(T)
                    .where(T.c.agent == agent, T.c.session_id == session_id)
                    .order_by(T.c.turn, T.c.step, T.c.id)
                    .limit(limit)
                )
            ).all()
        return [
            {
                **r._asdict(),
                "arguments": json.loads(r.arguments),
                "request": json.loads(r.request),
            }
            for r in rows
        ]

    async def sessions(self, agent: str, customer_id: str | None, *, limit: int = 100) -> list[Session]:
        q = select(S).where(S.c.agent == agent)
        if customer_id is not None:
            q = q.where(S.c.customer_id == customer_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(S.c.updated_at_us.desc()).limit(limit))).all()
        return [_session(r._asdict()) for r in rows]

    async def usage(self, agent: str, customer_id: str | None) -> dict[str, Any]:
        """Sessions' counters summed (the aggregate of per-session accounting)."""
        cols = [func.count().label("sessions"), func.coalesce(func.sum(S.c.turns), 0).label("turns")]
        cols += [func.coalesce(func.sum(getattr(S.c, k)), 0).label(k) for k in COUNTERS]
        q = select(*cols).where(S.c.agent == agent)
        if customer_id is not None:
            q = q.where(S.c.customer_id == customer_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).one()
        return {"object": "agent.usage", "agent": agent, **{k: int(v) for k, v in row._asdict().items()}}

    # ------------------------------------------------------------- escalations

    async def escalations(self, status: str | None, *, limit: int = 100) -> list[dict[str, Any]]:
        if status is not None and status not in ("open", "answered"):
            raise invalid("invalid_status", "status is open or answered", "status")
        q = select(E)
        if status is not None:
            q = q.where(E.c.status == status)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(E.c.created_at_us, E.c.id).limit(limit))).all()
        return [_escalation(r) for r in rows]

    async def escalation(self, escalation_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(E).where(E.c.id == escalation_id))).first()
        if row is None:
            raise not_found("escalation_not_found", f"no escalation {escalation_id!r}", "id")
        return _escalation(row)

    # ------------------------------------------------------------------- purge

    async def purge(self, agent: str, ttl_s: int) -> int:
        """Forget the messages, summary and state of sessions idle for ``ttl_s``;
        their counters stay (accounting outlives memory). Returns how many."""
        cutoff = self.clock.now_us() - ttl_s * 1_000_000
        stale = and_(S.c.agent == agent, S.c.updated_at_us < cutoff, S.c.next_seq > S.c.summary_through)
        async with writer(self.engine).begin() as conn:
            rows = (await conn.execute(select(S.c.id, S.c.next_seq).where(stale))).all()
            for r in rows:
                await conn.execute(delete(M).where(M.c.agent == agent, M.c.session_id == r.id))
                await conn.execute(
                    update(S)
                    .where(S.c.agent == agent, S.c.id == r.id)
                    .values(summary="", state="{}", summary_through=r.next_seq)
                )
        return len(rows)


def _escalation(r: Any) -> dict[str, Any]:
    d = r._asdict()
    return {"object": "agent.escalation", **d, "session_id": public(d["session_id"])}


def text(s: str) -> str:
    """Text as every backend stores it (PostgreSQL refuses NUL characters)."""
    return s.replace("\x00", "\ufffd")


def _session(row: dict[str, Any]) -> Session:
    return Session(
        agent=row["agent"],
        id=row["id"],
        customer_id=row["customer_id"],
        version=row["version"],
        status=row["status"],
        turns=row["turns"],
        next_seq=row["next_seq"],
        summary=row["summary"],
        summary_through=row["summary_through"],
        state=json.loads(row["state"]) if isinstance(row["state"], str) else row["state"],
        counters={k: int(row[k]) for k in COUNTERS},
        created_at_us=row["created_at_us"],
        updated_at_us=row["updated_at_us"],
    )
