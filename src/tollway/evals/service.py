"""Evals: sample an agent's sessions, grade them, compare two definition versions.

A run samples the agent's sessions active in the last ``window_days`` (one
definition version, or all): every escalated session, plus a random
``sample_share`` of the rest (a seed makes it repeatable), escalated first
up to ``max_sessions``. Each is checked deterministically
(:mod:`tollway.evals.checks`) and graded by the grader model
(:mod:`tollway.evals.grader`) on its transcript and the chunks it cited.
A comparison grades the sampled sessions of version A as they ran, replays
their user messages against version B in scratch sessions of the operator,
grades those, and reports B - A. Grader calls and replays are charged to the
operator's customer (``[evals] payer``) on the inference charge path.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.agents.service import Agents
from tollway.agents.store import public, scoped
from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import agent_escalations as E
from tollway.core.schema import agent_sessions as S
from tollway.core.schema import eval_grades as G
from tollway.core.schema import eval_runs as R
from tollway.core.storage import writer
from tollway.evals.checks import deterministic
from tollway.evals.config import EvalsConfig
from tollway.evals.examples import Examples
from tollway.evals.grader import SCORES, Grader
from tollway.identity.customers import Customers
from tollway.inference.service import Caller

log = logging.getLogger("tollway.evals")
_DAY_US = 86_400 * 1_000_000
REPLAY = "evals (replay)"  # who closes a replay's escalations


@dataclass(slots=True)
class Sampled:
    session_id: str  # stored id
    version: int
    escalated: bool


class Evals:
    def __init__(
        self, cfg: EvalsConfig, engine: AsyncEngine, clock: Clock, agents: Agents, customers: Customers
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.clock = clock
        self.agents = agents
        self.customers = customers
        self.grader = Grader(agents.inference, cfg.grader, cfg.grader_max_tokens, cfg.max_transcript_chars)
        self.examples = Examples(engine, clock, agents, cfg.payer)

    async def operator(self) -> Caller:
        """The operator's customer, who pays for grading and replays (made on first use)."""
        try:
            c = await self.customers.get(self.cfg.payer)
        except TollwayError as e:
            if e.status != 404:
                raise
            try:
                c = await self.customers.create("tollway operator (evals)", id=self.cfg.payer)
            except IntegrityError:  # another process made it meanwhile
                c = await self.customers.get(self.cfg.payer)
        return Caller(c.id, c.account_id)

    # ------------------------------------------------------------- sampling

    async def sample(
        self, agent: str, version: int | None, *, share: float | None = None, seed: int | None = None
    ) -> list[Sampled]:
        """Every escalated session, then a random share of the others."""
        share = self.cfg.sample_share if share is None else share
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
            raise invalid("invalid_share", "share is a number between 0 and 1", "share")
        if version is not None and (isinstance(version, bool) or not 0 <= version < 2**31):
            raise invalid("invalid_version", "version is a definition version number", "version")
        await self.agents.registry.latest(agent)  # 404 for an unknown agent
        since = self.clock.now_us() - self.cfg.window_days * _DAY_US
        escalated = select(E.c.session_id).where(E.c.agent == agent).distinct()
        q = select(S.c.id, S.c.version, S.c.status).where(
            S.c.agent == agent, S.c.updated_at_us >= since, S.c.customer_id != self.cfg.payer
        )
        if version is not None:
            q = q.where(S.c.version == version)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(S.c.id))).all()
            flagged = {r[0] for r in await conn.execute(escalated)}
        rng = random.Random(seed)
        picked = [Sampled(r.id, r.version, True) for r in rows if r.id in flagged or r.status == "escalated"]
        picked += [
            Sampled(r.id, r.version, False)
            for r in rows
            if not (r.id in flagged or r.status == "escalated") and rng.random() < share
        ]
        return picked[: self.cfg.max_sessions]

    # -------------------------------------------------------------- grading

    async def _chunks(self, agent: str, version: int, messages: list[dict[str, Any]]) -> dict[str, str]:
        """The text of every chunk the session's answers cited (from the agent's index)."""
        ids = list(dict.fromkeys(c["id"] for m in messages for c in (m["meta"].get("citations") or [])))
        if not ids:
            return {}
        spec = await self.agents.registry.get(agent, version)
        r = spec.retrieval
        try:
            found = await self.agents.vectors.get_by_ids(r.owner, r.index, ids[:100])
        except TollwayError:
            return dict.fromkeys(ids, "(the chunk is no longer in the index)")
        texts = {v["id"]: str((v.get("metadata") or {}).get("text", "")) for v in found}
        return {
            i: texts.get(i, "(the chunk is no longer in the index)")[: self.cfg.max_chunk_chars] for i in ids
        }

    async def _grade(
        self, caller: Caller, run_id: str, agent: str, s: Sampled, arm: str, graded_id: str | None = None
    ) -> dict[str, Any] | None:
        sid = graded_id or s.session_id
        store = self.agents.store
        messages = [
            {"role": m.role, "content": m.content, "meta": m.meta}
            for m in await store.messages(agent, sid, limit=10_000)
        ]
        if not messages:  # purged (memory.ttl_seconds): nothing to grade
            return None
        checks = deterministic(messages, await store.tool_log(agent, sid, limit=10_000))
        version = s.version if graded_id is None else (await store.load(agent, sid, None)).version
        g = await self.grader.grade(caller, messages, await self._chunks(agent, version, messages))
        row = {
            "id": new_id("evg"),
            "run_id": run_id,
            "agent": agent,
            "session_id": s.session_id,
            "version": version,
            "arm": arm,
            "escalated": int(s.escalated),
            **g.scores,
            "checks": json.dumps(checks),
            "grader_output": g.output[:4000],
            "cost": g.cost,
            "created_at_us": self.clock.now_us(),
        }
        async with writer(self.engine).begin() as conn:
            await conn.execute(G.insert().values(**row))
        return row

    async def _replay(
        self, caller: Caller, run_id: str, agent: str, s: Sampled, version_b: int, n: int
    ) -> str:
        """The sampled session's user messages, sent to version B in a scratch session of the operator."""
        msgs = await self.agents.store.messages(agent, s.session_id, limit=10_000)
        sid = f"eval-{run_id}-{n}"
        stored = scoped(caller.customer_id, sid)
        await self.agents.store.create(agent, stored, caller.customer_id, version_b)
        for m in msgs:
            if m.role != "user":
                continue
            try:
                await self.agents.send(caller, agent, sid, m.content)
            except TollwayError as e:
                if e.status >= 500 or e.status == 402:
                    raise
                log.info("eval %s: replayed message refused: %s", run_id, e.code)  # a blocked message
        async with writer(self.engine).begin() as conn:  # a replay's hand-over waits for nobody
            await conn.execute(
                update(E)
                .where(E.c.agent == agent, E.c.session_id == stored, E.c.status == "open")
                .values(status="answered", answer="", answered_by=REPLAY, answered_at_us=self.clock.now_us())
            )
        return stored

    # ----------------------------------------------------------------- runs

    async def _start(self, kind: str, agent: str, version: int | None, version_b: int | None) -> str:
        run_id = new_id("evr")
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                R.insert().values(
                    id=run_id,
                    kind=kind,
                    agent=agent,
                    version=version,
                    version_b=version_b,
                    status="running",
                    grader=self.cfg.grader,
                    summary="{}",
                    cost=0,
                    created_at_us=self.clock.now_us(),
                )
            )
        return run_id

    async def _end(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        async with writer(self.engine).begin() as conn:
            cost = (
                await conn.execute(select(func.coalesce(func.sum(G.c.cost), 0)).where(G.c.run_id == run_id))
            ).scalar_one()
            await conn.execute(
                update(R)
                .where(R.c.id == run_id)
                .values(
                    status=status,
                    summary=json.dumps(summary),
                    cost=int(cost),
                    finished_at_us=self.clock.now_us(),
                )
            )

    async def run(
        self, agent: str, *, version: int | None = None, share: float | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """Sample and grade; returns the run with its grades."""
        self.agents.inference.model(self.cfg.grader, "chat")  # 404 for a grader not in the registry
        sampled = await self.sample(agent, version, share=share, seed=seed)
        caller = await self.operator()
        run_id = await self._start("run", agent, version, None)
        try:
            rows = [g for s in sampled if (g := await self._grade(caller, run_id, agent, s, "a")) is not None]
            examples = await self.examples.harvest(agent)
        except Exception as e:
            await self._end(run_id, "failed", {"error": f"{type(e).__name__}: {e}"})
            raise
        await self._end(
            run_id, "done", {"sampled": len(sampled), "examples_kept": examples, **_summary(rows)}
        )
        return await self.show(run_id)

    async def compare(
        self,
        agent: str,
        version_a: int,
        version_b: int,
        *,
        share: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Grade version A's sampled sessions and their replays on version B; the deltas B - A."""
        self.agents.inference.model(self.cfg.grader, "chat")
        for v, p in ((version_a, "version_a"), (version_b, "version_b")):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31:
                raise invalid(f"invalid_{p}", f"{p} is a definition version number", p)
            await self.agents.registry.get(agent, v)
        sampled = await self.sample(agent, version_a, share=share, seed=seed)
        caller = await self.operator()
        run_id = await self._start("compare", agent, version_a, version_b)
        a_rows: list[dict[str, Any]] = []
        b_rows: list[dict[str, Any]] = []
        try:
            for n, s in enumerate(sampled):
                a = await self._grade(caller, run_id, agent, s, "a")
                if a is None:
                    continue
                replayed = await self._replay(caller, run_id, agent, s, version_b, n)
                b = await self._grade(caller, run_id, agent, s, "b", graded_id=replayed)
                a_rows.append(a)
                if b is not None:
                    b_rows.append(b)
        except Exception as e:
            await self._end(run_id, "failed", {"error": f"{type(e).__name__}: {e}"})
            raise
        sa, sb = _summary(a_rows), _summary(b_rows)
        delta = {
            k: None
            if sa["scores"][k] is None or sb["scores"][k] is None
            else round(sb["scores"][k] - sa["scores"][k], 3)
            for k in SCORES
        }
        delta["checks_passed"] = round(sb["checks_passed"] - sa["checks_passed"], 3)
        await self._end(run_id, "done", {"sampled": len(sampled), "a": sa, "b": sb, "delta": delta})
        return await self.show(run_id)

    # ---------------------------------------------------------------- reads

    async def show(self, run_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(R).where(R.c.id == run_id))).first()
            if r is None:
                raise not_found("eval_run_not_found", f"no eval run {run_id!r}", "id")
            grades = (
                await conn.execute(select(G).where(G.c.run_id == run_id).order_by(G.c.session_id, G.c.arm))
            ).all()
        return {**_run(r), "grades": [_grade(g) for g in grades]}

    async def runs(self, agent: str | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000:
            raise invalid("invalid_limit", "limit is between 1 and 1000", "limit")
        q = select(R).order_by(R.c.created_at_us.desc(), R.c.id.desc()).limit(limit)
        if agent is not None:
            q = q.where(R.c.agent == agent)
        async with self.engine.connect() as conn:
            return [_run(r) for r in await conn.execute(q)]


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scores: dict[str, float | None] = {}
    for k in SCORES:
        vals = [r[k] for r in rows if r[k] is not None]
        scores[k] = round(sum(vals) / len(vals), 3) if vals else None
    passed = [json.loads(r["checks"])["passed"] for r in rows]
    return {
        "graded": len(rows),
        "escalated": sum(r["escalated"] for r in rows),
        "scores": scores,
        "checks_passed": round(sum(passed) / len(passed), 3) if passed else 0.0,
        "cost": sum(r["cost"] for r in rows),
    }


def _run(r: Any) -> dict[str, Any]:
    d = r._asdict()
    return {"object": "eval.run", **d, "summary": json.loads(d["summary"])}


def _grade(g: Any) -> dict[str, Any]:
    d = g._asdict()
    return {
        "object": "eval.grade",
        **d,
        "session_id": public(d["session_id"]),
        "checks": json.loads(d["checks"]),
    }
