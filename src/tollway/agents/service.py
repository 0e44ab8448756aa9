"""Agent sessions: the turn.

One turn, under the session's single writer (tollway.agents.writer):
load the session → guard the input → retrieve and cite chunks → ask the model,
calling tools it asks for (up to ``max_steps`` model calls) → guard the
output → fold old turns into the summary → write the turn in one transaction.
Every model call is charged on the inference charge path, within the
session's budget (a ledger cap, so concurrent turns cannot overshoot it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.agents import memory
from tollway.agents.config import AgentsSettings
from tollway.agents.definitions import Registry
from tollway.agents.guardrails import GuardPolicy, check_input, check_output, escalation_for, screen_untrusted
from tollway.agents.model import Model, Reply, assistant_calls, tool_result
from tollway.agents.spec import AgentSpec
from tollway.agents.store import SESSION_ID, Message, Session, Store, Turn, public, scoped
from tollway.agents.tools import MAX_FOR_MODEL, Tools, invalid_arguments
from tollway.agents.writer import Writers
from tollway.charge.hold import Cap
from tollway.charge.limits import BUDGETS, Limit, LimitAccounts
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError, conflict, invalid
from tollway.core.ids import new_id
from tollway.core.money import parse_amount
from tollway.inference.service import Caller, Inference
from tollway.ledger import Ledger
from tollway.observe import tracing
from tollway.vectors.service import Vectors
from tollway.wallets.broker import Broker
from tollway.wallets.ssrf import Guard

log = logging.getLogger("tollway.agents")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
MAX_STATE_BYTES = 16 * 1024
SESSION_BUDGET = (
    "session_budget_exceeded"  # the session's own budget (a key's or customer's: budget_exceeded)
)
ESCALATED_REPLY = "I have passed this conversation to a person; they will answer here."
BLOCKED_REPLY = "I cannot share that answer."
BUDGET_REPLY = "This conversation has used up its budget."
INVALID_CALL = "Your tool call was invalid ({why}). Call a tool with valid arguments, or answer."
ANSWER_NOW = "You have the results of those tool calls above. Answer now, without calling a tool."
WITHOUT_TOOLS = "The tool call was invalid again. Answer without calling a tool."


async def _quiet(_: str, __: dict[str, Any]) -> None:
    return None


class Agents:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        writers: Writers,
        model: Model,
        tools: Tools,
        vectors: Vectors,
        ledger: Ledger,
    ) -> None:
        self.registry = registry
        self.store = store
        self.writers = writers
        self.model = model
        self.tools = tools
        self.vectors = vectors
        self.ledger = ledger
        self.budgets = LimitAccounts(ledger, registry.clock)
        self._policies: dict[tuple[str, int], GuardPolicy] = {}

    @property
    def inference(self) -> Inference:
        return self.model.inference

    async def aclose(self) -> None:
        await self.tools.aclose()

    # -------------------------------------------------------------- sessions

    async def create_session(self, customer_id: str, agent: str, session_id: str | None = None) -> Session:
        sid = session_id if session_id is not None else new_id("ses")
        if not isinstance(sid, str) or not SESSION_ID.match(sid):
            raise invalid("invalid_session_id", "id: letters, digits and _.:- (at most 115)", "id")
        version, _ = await self.registry.latest(agent)
        return await self.store.create(agent, scoped(customer_id, sid), customer_id, version)

    async def session(self, customer_id: str | None, agent: str, session_id: str) -> dict[str, Any]:
        """A customer's session by the id it chose (``customer_id`` None: an
        operator's look-up, by that id if one customer uses it, or the stored id)."""
        await self.registry.latest(agent)  # 404 for an unknown agent
        if customer_id is not None:
            session_id = scoped(customer_id, session_id)
        else:
            session_id = await self.store.find(agent, session_id)
        s = await self.store.load(agent, session_id, customer_id)
        spec = await self.registry.get(agent, s.version)
        out = s.to_dict()
        out["budget"] = await self._budget_status(spec, s)
        out["queued"] = self.writers.queued(agent, session_id)
        return out

    async def update_state(
        self, customer_id: str, agent: str, session_id: str, changes: Any
    ) -> dict[str, Any]:
        """Merge ``changes`` into the session's key-value state (a null value
        deletes its key), between turns: under the session's single writer."""
        if not isinstance(changes, dict) or not changes:
            raise invalid(
                "invalid_state", "state is a non-empty object of keys to set (null deletes)", "state"
            )
        for k, v in changes.items():
            if not isinstance(k, str) or not 1 <= len(k) <= 64:
                raise invalid("invalid_state", "state keys are strings of 1 to 64 characters", "state")
            if v is not None and not isinstance(v, str | int | float | bool):
                raise invalid(
                    "invalid_state", f"state.{k} is a string, number, boolean or null", f"state.{k}"
                )
        session_id = scoped(customer_id, session_id)
        async with self.writers.hold(agent, session_id):
            await self.registry.latest(agent)
            s = await self.store.load(agent, session_id, customer_id)
            state = {k: v for k, v in {**s.state, **changes}.items() if v is not None}
            if len(json.dumps(state)) > MAX_STATE_BYTES:
                raise invalid("state_too_large", f"the state is over {MAX_STATE_BYTES} bytes", "state")
            await self.store.set_state(s, state)
        return s.to_dict()

    def policy(self, spec: AgentSpec, version: int) -> GuardPolicy:
        key = (spec.name, version)
        p = self._policies.get(key)
        if p is None:
            p = self._policies[key] = spec.policy()
        return p

    # ------------------------------------------------------------------ budget

    def _budget_amount(self, spec: AgentSpec) -> int:
        b = spec.budget
        if b.usd:
            return parse_amount(b.usd)
        if b.neurons:
            return -(-b.neurons * self.inference.micros_per_1000_neurons // 1000)
        return 0

    @staticmethod
    def _budget_account(s: Session) -> str:
        digest = hashlib.blake2b(f"{s.agent}\0{s.id}".encode(), digest_size=16).hexdigest()
        return f"agb_{digest}"

    async def _caps(self, spec: AgentSpec, s: Session) -> tuple[Cap, ...]:
        amount = self._budget_amount(spec)
        if not amount:
            return ()
        budget = Limit(
            self._budget_account(s),
            amount,
            "agent session budget",
            BUDGETS,
            s.customer_id,
            name=f"agent {s.agent} session {s.id} budget"[:200],
            code=SESSION_BUDGET,
        )
        return (await self.budgets.cap(budget),)

    async def _budget_status(self, spec: AgentSpec, s: Session) -> dict[str, Any] | None:
        amount = self._budget_amount(spec)
        if not amount:
            return None
        spent, held = await self.budgets.used(self._budget_account(s))
        return {"limit": amount, "spent": spent, "held": held}

    # -------------------------------------------------------------------- turn

    async def check(self, customer_id: str, agent: str, session_id: str, content: Any) -> None:
        """The refusals a message would meet before its turn runs (404, 400):
        for the streaming and WebSocket paths, which answer before the turn ends."""
        if not isinstance(content, str) or not content.strip():
            raise invalid("invalid_content", "content is a non-empty string", "content")
        await self.registry.latest(agent)
        version = await self.store.version_of(agent, scoped(customer_id, session_id), customer_id)
        policy = self.policy(await self.registry.get(agent, version), version)
        if len(content) > policy.max_input_chars:
            raise invalid(
                "message_too_long", f"content is over {policy.max_input_chars} characters", "content"
            )

    async def send(
        self,
        caller: Caller,
        agent: str,
        session_id: str,
        content: Any,
        emit: Emit | None = None,
        *,
        origin: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One user message: the turn it makes, written whole. ``origin`` marks
        a delivery that may be repeated (a schedule's run): a second delivery of
        the same origin makes no second turn."""
        if not isinstance(content, str) or not content.strip():
            raise invalid("invalid_content", "content is a non-empty string", "content")
        # The queue is joined before anything else is awaited: turns apply in
        # the order they were sent.
        session_id = scoped(caller.customer_id, session_id)
        async with self.writers.hold(agent, session_id):
            await self.registry.latest(agent)  # 404 for an unknown agent
            with tracing.span(f"invoke_agent {agent}") as sp:
                out = await self._turn(caller, agent, session_id, content, emit or _quiet, origin)
                if sp is not None:
                    sp.set_attribute("gen_ai.operation.name", "invoke_agent")
                    sp.set_attribute("gen_ai.agent.name", agent)
                    sp.set_attribute("gen_ai.conversation.id", public(session_id))
                    usage = out.get("usage") or {}
                    sp.set_attribute("tollway.charge_micros", int(usage.get("cost", 0)))
                    sp.set_attribute("gen_ai.usage.input_tokens", int(usage.get("input_tokens", 0)))
                    sp.set_attribute("gen_ai.usage.output_tokens", int(usage.get("output_tokens", 0)))
                return out

    async def _turn(
        self, caller: Caller, agent: str, sid: str, content: str, emit: Emit, origin: dict[str, Any] | None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        s = await self.store.load(agent, sid, caller.customer_id)
        if origin is not None and any(m.meta.get("origin") == origin for m in s.recent):
            return {"object": "agent.turn", "agent": agent, "session_id": public(sid), "duplicate": True}
        spec = await self.registry.get(agent, s.version)
        policy = self.policy(spec, s.version)
        v = check_input(content, policy)
        if v.blocked == "too_long":
            raise invalid(
                "message_too_long", f"content is over {policy.max_input_chars} characters", "content"
            )
        if v.blocked:
            raise invalid("message_blocked", "the message matches a blocked pattern", "content")
        turn = Turn()
        user_meta: dict[str, Any] = {"flags": list(v.flags)}
        if origin is not None:
            user_meta["origin"] = origin
        turn.messages.append(("user", v.text, user_meta))
        model_us = 0
        if s.status == "escalated":  # a person has the conversation: the message waits for them
            reply = None
        elif v.escalate:
            reply = self._escalate(turn, v.escalate, v.text)
        elif v.refusal:
            reply = (v.refusal, {"refusal": True})
        else:
            caller = replace(caller, caps=(*caller.caps, *await self._caps(spec, s)))
            reply, model_us = await self._answer(caller, spec, s, policy, v.text, turn, emit)
        if reply is not None:
            text, meta = reply
            turn.messages.append(("assistant", text, meta))
        turn.counters["latency_us"] = int((time.perf_counter() - t0) * 1_000_000)
        added = await self.store.commit(s, turn)
        out = self._outcome(s, turn, added, model_us)
        await emit("done", out)
        return out

    def _escalate(self, turn: Turn, reason: str, detail: str) -> tuple[str, dict[str, Any]]:
        esc = new_id("esc")
        turn.escalation = {"id": esc, "reason": reason, "detail": detail[:4000]}
        turn.status = "escalated"
        return ESCALATED_REPLY, {"escalation": {"id": esc, "reason": reason}}

    async def _answer(
        self,
        caller: Caller,
        spec: AgentSpec,
        s: Session,
        policy: GuardPolicy,
        text: str,
        turn: Turn,
        emit: Emit,
    ) -> tuple[tuple[str, dict[str, Any]], int]:
        c = turn.counters
        model_us = 0
        chunks: list[memory.Chunk] = []
        flags: list[str] = []
        if spec.retrieval.index:
            t = time.perf_counter()
            chunks, cost = await memory.retrieve(self.vectors, caller, spec, text)
            model_us += int((time.perf_counter() - t) * 1_000_000)  # embedding is model time
            c["retrievals"] += 1
            c["cost"] += cost
            screened = []
            for ch in chunks:
                sv = screen_untrusted(ch.text, policy, source=f"chunk:{ch.id}")
                flags += [f"{f}:{ch.id}" for f in sv.flags]
                screened.append(memory.Chunk(ch.id, sv.text, ch.score, ch.doc))
            chunks = screened
            await emit("retrieval", {"citations": [ch.cite() for ch in chunks]})
        cfg = self.model.config(spec)

        messages = memory.context(spec, s, chunks, text, await self.model.counter(cfg))
        tools = list(spec.tools) or None
        retried = False
        made: set[tuple[str, str]] = set()  # (tool, arguments) called this turn
        answer: str | None = None
        try:
            for step in range(spec.max_steps + 1):
                offer = tools if step < spec.max_steps else None  # the last call answers
                reply = await self.model.ask(caller, spec, messages, offer)
                model_us += reply.model_us
                _account(c, reply)
                why = _invalid_call(spec, reply) if offer else None
                if why is not None:
                    flags.append("invalid_tool_call")
                    if retried:
                        tools = None
                        messages.append({"role": "user", "content": WITHOUT_TOOLS})
                    else:
                        retried = True
                        messages.append({"role": "user", "content": INVALID_CALL.format(why=why)})
                    continue
                if not reply.calls:
                    answer = reply.text
                    break
                asked_now = [(a.name, json.dumps(a.arguments, sort_keys=True)) for a in reply.calls]
                if all(k in made for k in asked_now):  # the same call again: it has its answer
                    tools = None
                    messages.append({"role": "user", "content": ANSWER_NOW})
                    continue
                made.update(asked_now)
                messages.append(assistant_calls(reply.calls))
                for asked in reply.calls:
                    tool = spec.tool(asked.name)
                    assert tool is not None and isinstance(asked.arguments, dict)
                    call = await self.tools.call(spec, tool, asked.arguments, session_id=s.id, step=step)
                    turn.tool_calls.append(call)
                    c["tool_calls"] += 1
                    c["cost"] += call.cost
                    await emit("tool_call", call.to_dict())
                    body = call.response[:MAX_FOR_MODEL]
                    if call.status != "ok":
                        body = f"the tool call failed ({call.status}: {call.error}). {body}".strip()
                        reason = escalation_for("tool_failure", policy)
                        if reason and turn.escalation is None:
                            self._escalate(turn, reason, f"tool {tool.name} failed: {call.error}")
                    sv = screen_untrusted(body, policy, source=f"tool:{tool.name}")
                    flags += [f"{f}:{tool.name}" for f in sv.flags]
                    messages.append(tool_result(asked, sv.text))
                if turn.escalation is not None:  # a person takes over: no more model calls
                    break
        except TollwayError as e:
            if e.type != ErrorType.PAYMENT or e.code != SESSION_BUDGET:
                raise
            reason = escalation_for("budget_exhausted", policy)
            if reason is None and not turn.tool_calls:
                raise  # nothing happened yet: the turn is refused whole (402)
            flags.append("budget_exhausted")
            if reason is not None and turn.escalation is None:
                answer, meta = self._escalate(turn, reason, "the session's budget is used up")
                return (answer, {**meta, "flags": flags}), model_us
            answer = BUDGET_REPLY
        if turn.escalation is not None:  # a tool failure handed the conversation over
            return (
                ESCALATED_REPLY,
                {
                    "escalation": {"id": turn.escalation["id"], "reason": turn.escalation["reason"]},
                    "flags": flags,
                },
            ), model_us
        out = check_output(answer or "", policy)
        flags += list(out.flags)
        final = BLOCKED_REPLY if out.blocked else out.text
        model_us += await self._summarize(caller, spec, s, turn)
        meta = {
            "citations": [ch.cite() for ch in chunks],
            "tool_calls": [tc.id for tc in turn.tool_calls],
            "flags": flags,
        }
        await emit("message", {"role": "assistant", "content": final, **meta})
        return (final, meta), model_us

    async def _summarize(self, caller: Caller, spec: AgentSpec, s: Session, turn: Turn) -> int:
        fold = memory.to_summarize(spec, s)
        if not fold:
            return 0
        try:
            reply = await self.model.ask(caller, spec, memory.summary_prompt(s.summary, fold))
        except TollwayError as e:
            if e.type != ErrorType.PAYMENT:
                raise
            log.info("session %s/%s: no summary (%s)", s.agent, s.id, e.code)
            return 0
        _account(turn.counters, reply)
        turn.summary = (reply.text.strip() or s.summary, fold[-1].seq + 1)
        return reply.model_us

    def _outcome(self, s: Session, turn: Turn, added: list[Message], model_us: int) -> dict[str, Any]:
        reply = next((m for m in reversed(added) if m.role in ("assistant", "human")), None)
        return {
            "object": "agent.turn",
            "agent": s.agent,
            "session_id": public(s.id),
            "turn": s.turns,
            "status": s.status,
            "reply": None if reply is None else reply.to_dict(),
            "messages": [m.to_dict() for m in added],
            "tool_calls": [c.to_dict() for c in turn.tool_calls],
            "escalation": turn.escalation,
            "usage": {**turn.counters, "model_us": model_us},
            "session_usage": dict(s.counters),
        }

    # ------------------------------------------------------------- escalation

    async def answer_escalation(self, escalation_id: str, content: Any, by: Any) -> dict[str, Any]:
        """A person's reply: it joins the conversation (as the agent's answer)
        and the session continues with the model."""
        if not isinstance(content, str) or not content.strip():
            raise invalid("invalid_content", "content is a non-empty string", "content")
        if not isinstance(by, str) or not 1 <= len(by) <= 200:
            raise invalid("invalid_by", "by names who answers (1 to 200 characters)", "by")
        esc = await self.store.escalation(escalation_id)
        if esc["status"] != "open":
            raise conflict("escalation_answered", f"escalation {escalation_id} is already answered", "id")
        sid = scoped(esc["customer_id"], esc["session_id"])
        async with self.writers.hold(esc["agent"], sid):
            s = await self.store.load(esc["agent"], sid, None)
            turn = Turn(status="active", answers=(escalation_id, by))
            turn.messages.append(("human", content, {"by": by, "escalation": escalation_id}))
            added = await self.store.commit(s, turn)
        return self._outcome(s, turn, added, 0)

    # ------------------------------------------------------------------ purge

    async def run_purge(self, interval_s: float) -> None:
        """Purge stale memory every ``interval_s`` (the Runtime's background loop)."""
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await self.purge()

    async def purge(self) -> int:
        n = 0
        for a in await self.registry.agents():
            ttl = int(a["definition"].get("memory", {}).get("ttl_seconds", 0))
            if ttl:
                n += await self.store.purge(a["name"], ttl)
        return n


def _account(c: dict[str, int], r: Reply) -> None:
    c["input_tokens"] += r.input_tokens
    c["output_tokens"] += r.output_tokens
    c["mneurons"] += r.mneurons
    c["cost"] += r.charged


def _invalid_call(spec: AgentSpec, r: Reply) -> str | None:
    if r.malformed is not None:
        return "the output is not the JSON asked for"
    for asked in r.calls:
        tool = spec.tool(asked.name)
        if tool is None:
            return f"there is no tool {asked.name!r}"
        why = invalid_arguments(tool, asked.arguments)
        if why is not None:
            return f"{asked.name}: {why}"
    return None


def build(
    settings: AgentsSettings,
    engine: AsyncEngine,
    clock: Clock,
    inference: Inference,
    vectors: Vectors,
    broker: Broker,
    ledger: Ledger,
) -> Agents:
    cfg = settings.agents
    return Agents(
        Registry(engine, clock, cfg.definitions),
        Store(engine, clock),
        Writers(engine, max_held=settings.database.pool_size),
        Model(inference),
        Tools(Guard(cfg.tool_allow), broker, cfg.max_tool_bytes, self_url(settings)),
        vectors,
        ledger,
    )


def self_url(settings: AgentsSettings) -> str:
    """This server's own base URL, from the port it serves on (``serve --port`` included)."""
    host = settings.server.host
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    return f"http://{host}:{settings.server.port}"
