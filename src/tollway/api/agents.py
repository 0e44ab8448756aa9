"""Agent sessions over HTTP: ``/v1/agents/{agent}/sessions/{id}`` (scope
``agents``; each customer names its sessions in its own namespace), messages
as JSON, SSE or a WebSocket; and the human queue at ``/v1/escalations`` (the
admin token: the people who answer are operators)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse

from tollway.agents.alarms import owner
from tollway.agents.service import Agents, Emit
from tollway.agents.store import scoped
from tollway.api.auth import require_admin, require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.billing.plans import AI_CHAT
from tollway.core import jsonparse
from tollway.core.errors import TollwayError, forbidden, invalid, unauthenticated
from tollway.identity.keys import ApiKey, presented_key
from tollway.inference.service import Caller
from tollway.runtime import Runtime
from tollway.schedules import Schedule

router = APIRouter(route_class=JsonRoute, prefix="/v1/agents", tags=["agents"])
escalations = APIRouter(
    route_class=JsonRoute, prefix="/v1/escalations", tags=["agents"], dependencies=[Depends(require_admin)]
)


_LIMIT: Any = Query(100, ge=1, le=1000, description="At most this many (1 to 1000)")


def agents_of(request: Request) -> Agents:
    a: Agents = runtime(request).agents
    return a


def _caller(key: ApiKey) -> Caller:
    require_scope(key, "agents")
    return Caller(key.customer_id, key.account_id, key.id, tags=key.tags, funding=key.payer)


async def _obj(request: Request, allowed: set[str]) -> dict[str, Any]:
    raw = await request.body()
    body = jsonparse.body(raw, "body") if raw.strip() else {}
    if not isinstance(body, dict):
        raise invalid("invalid_body", "the body is a JSON object", "body")
    extra = sorted(set(body) - allowed)
    if extra:
        raise invalid("unknown_parameter", f"unknown field {extra[0]!r}", extra[0])
    return body


@router.get("", summary="The agents")
async def agent_list(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    _caller(key)
    data = await agents_of(request).registry.agents()
    return {
        "object": "list",
        "data": [{"object": "agent", "name": a["name"], "version": a["version"]} for a in data],
    }


@router.post("/{agent}/sessions", status_code=201, summary="Open a session")
async def session_create(agent: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    c = _caller(key)
    b = await _obj(request, {"id"})
    s = await agents_of(request).create_session(c.customer_id, agent, b.get("id"))
    return s.to_dict()


@router.get("/{agent}/sessions", summary="The calling customer's sessions of an agent")
async def session_list(
    agent: str, request: Request, limit: int = _LIMIT, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    c = _caller(key)
    a = agents_of(request)
    await a.registry.latest(agent)
    found = await a.store.sessions(agent, c.customer_id, limit=limit)
    return {"object": "list", "data": [s.to_dict() for s in found]}


@router.get("/{agent}/usage", summary="Usage summed over the calling customer's sessions")
async def usage(agent: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    c = _caller(key)
    a = agents_of(request)
    await a.registry.latest(agent)
    return await a.store.usage(agent, c.customer_id)


@router.get("/{agent}/sessions/{session_id}", summary="A session: status, summary, state, usage, budget")
async def session_get(
    agent: str, session_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    return await agents_of(request).session(_caller(key).customer_id, agent, session_id)


@router.patch(
    "/{agent}/sessions/{session_id}/state", summary="Set keys of the session's state (null deletes)"
)
async def state(
    agent: str, session_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    b = await _obj(request, {"state"})
    return await agents_of(request).update_state(_caller(key).customer_id, agent, session_id, b.get("state"))


@router.get("/{agent}/sessions/{session_id}/messages", summary="A session's messages, oldest first")
async def messages(
    agent: str,
    session_id: str,
    request: Request,
    after: int = Query(0, ge=0, le=2**63 - 1, description="Only messages after this seq"),
    limit: int = _LIMIT,
    key: ApiKey = Depends(require_key),
) -> dict[str, Any]:
    a, c = agents_of(request), _caller(key)
    await a.session(c.customer_id, agent, session_id)
    sid = scoped(c.customer_id, session_id)
    found = await a.store.messages(agent, sid, after=after, limit=limit)
    return {"object": "list", "data": [m.to_dict() for m in found]}


@router.get("/{agent}/sessions/{session_id}/tool_calls", summary="A session's tool log")
async def tool_calls(
    agent: str, session_id: str, request: Request, limit: int = _LIMIT, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    a, c = agents_of(request), _caller(key)
    await a.session(c.customer_id, agent, session_id)
    sid = scoped(c.customer_id, session_id)
    return {
        "object": "list",
        "data": await a.store.tool_log(agent, sid, limit=limit),
    }


async def _gated(
    rt: Runtime,
    key: ApiKey,
    headers: Any,
    agent: str,
    session_id: str,
    content: Any,
    stream: bool,
    emit: Emit | None = None,
) -> dict[str, Any]:
    """One turn through the gateway, as a chat completion goes: the key's and
    customer's rate limits, plan entitlements and quotas, spend limits as caps
    on every model call, and one request-log entry for the turn."""
    require_scope(key, "agents")
    _, spec = await rt.agents.registry.latest(agent)
    gw = rt.gateway
    p = await gw.admit(key, "agents.messages", headers, spec.model, stream, AI_CHAT)
    e = p.entry
    out: dict[str, Any] | None = None
    try:
        out = await rt.agents.send(await gw.caller(p), agent, session_id, content, emit)
        return out
    except TollwayError as err:
        e.status, e.error_code = err.status, err.code
        raise
    except BaseException:
        e.status, e.error_code = 500, "internal_error"
        raise
    finally:
        u = (out or {}).get("usage") or {}
        e.input_tokens, e.output_tokens = u.get("input_tokens", 0), u.get("output_tokens", 0)
        e.mneurons, e.cost = u.get("mneurons", 0), u.get("cost", 0)
        await gw.book_tokens(p, e.input_tokens + e.output_tokens)
        gw.log.record(e)


@router.post(
    "/{agent}/sessions/{session_id}/messages",
    summary="Send a message: the turn as JSON, or its events as SSE with stream: true",
    response_model=None,
)
async def send(
    agent: str, session_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any] | StreamingResponse:
    c = _caller(key)
    b = await _obj(request, {"content", "stream"})
    rt = runtime(request)
    stream = b.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("invalid_parameter", "stream is true or false", "stream")
    content = b.get("content")
    if not stream:
        # The turn runs to its end even if the client goes away: it is written whole.
        turn = _gated(rt, key, request.headers, agent, session_id, content, False)
        return await asyncio.shield(asyncio.ensure_future(turn))
    await rt.agents.check(c.customer_id, agent, session_id, content)

    async def run(emit: Emit) -> Any:
        return await _gated(rt, key, request.headers, agent, session_id, content, True, emit)

    return StreamingResponse(_sse(run), media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _events(run: Callable[[Emit], Awaitable[Any]]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A turn's events as they happen; the turn runs in a task of its own."""
    q: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    async def emit(event: str, data: dict[str, Any]) -> None:
        await q.put((event, data))

    async def go() -> None:
        try:
            await run(emit)
        except TollwayError as e:
            await q.put(("error", e.to_dict()))
        finally:
            await q.put(None)

    task = asyncio.ensure_future(go())
    try:
        while (item := await q.get()) is not None:
            yield item
    finally:
        if not task.done():  # the client left: the turn still completes
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


async def _sse(run: Callable[[Emit], Awaitable[Any]]) -> AsyncIterator[bytes]:
    async for event, data in _events(run):
        yield b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.websocket("/{agent}/sessions/{session_id}/ws")
async def ws(websocket: WebSocket, agent: str, session_id: str) -> None:
    """Send ``{"content": ...}``; each turn's events come back as ``{"event", "data"}``."""
    rt: Runtime = websocket.app.state.runtime
    a = rt.agents
    await websocket.accept()
    try:
        token = presented_key(websocket.headers)
        if token is None:
            raise unauthenticated("missing_api_key", "send Authorization: Bearer <API key>")
        key = await rt.keys.verify(token)
        c = _caller(key)
        await a.session(c.customer_id, agent, session_id)
    except TollwayError as e:
        await websocket.send_json({"event": "error", "data": e.to_dict()})
        await websocket.close(code=1008)
        return
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            raw = await websocket.receive_text()
            try:
                msg = jsonparse.body(raw, "message")
                content = msg.get("content") if isinstance(msg, dict) else None
                await a.check(c.customer_id, agent, session_id, content)
            except TollwayError as e:
                await websocket.send_json({"event": "error", "data": e.to_dict()})
                continue

            async def run(emit: Emit, content: Any = content) -> Any:
                return await _gated(rt, key, websocket.headers, agent, session_id, content, True, emit)

            async for event, data in _events(run):
                await websocket.send_json({"event": event, "data": data})


# -------------------------------------------------------------------- schedules


def _schedule(s: Schedule, agent: str, session_id: str) -> dict[str, Any]:
    """A schedule as its customer names the session (stored under the customer's namespace)."""
    return {**s.to_dict(), "owner": owner(agent, session_id)}


@router.post(
    "/{agent}/sessions/{session_id}/schedules",
    status_code=201,
    summary="Schedule a message to the session: delay_seconds, at (ISO 8601) or cron",
)
async def schedule_create(
    agent: str, session_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    if key.payer is not None:  # a later turn runs without the token: its wallet's limits could not hold
        raise forbidden("agent_token_not_allowed", "scheduled messages are made with a customer's API key")
    b = await _obj(request, {"content", "delay_seconds", "at", "cron", "max_attempts", "idempotency_key"})
    s = await runtime(request).alarms.schedule(_caller(key), agent, session_id, b)
    return _schedule(s, agent, session_id)


@router.get("/{agent}/sessions/{session_id}/schedules", summary="The session's schedules, soonest first")
async def schedule_list(
    agent: str,
    session_id: str,
    request: Request,
    include_done: bool = False,
    key: ApiKey = Depends(require_key),
) -> dict[str, Any]:
    found = await runtime(request).alarms.list(_caller(key).customer_id, agent, session_id, include_done)
    return {"object": "list", "data": [_schedule(s, agent, session_id) for s in found]}


@router.get("/{agent}/sessions/{session_id}/schedules/{schedule_id}", summary="A schedule")
async def schedule_get(
    agent: str, session_id: str, schedule_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    s = await runtime(request).alarms.get(_caller(key).customer_id, agent, session_id, schedule_id)
    return _schedule(s, agent, session_id)


@router.delete("/{agent}/sessions/{session_id}/schedules/{schedule_id}", summary="Cancel a schedule")
async def schedule_cancel(
    agent: str, session_id: str, schedule_id: str, request: Request, key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    s = await runtime(request).alarms.cancel(_caller(key).customer_id, agent, session_id, schedule_id)
    return _schedule(s, agent, session_id)


# ------------------------------------------------------------------ escalations


@escalations.get("", summary="The human queue (oldest first)")
async def escalation_list(
    request: Request, status: str | None = "open", limit: int = _LIMIT
) -> dict[str, Any]:
    found = await agents_of(request).store.escalations(status or None, limit=limit)
    return {"object": "list", "data": found}


@escalations.get("/{escalation_id}", summary="An escalation")
async def escalation_get(escalation_id: str, request: Request) -> dict[str, Any]:
    return await agents_of(request).store.escalation(escalation_id)


@escalations.post("/{escalation_id}/reply", summary="Answer as a person: the session continues")
async def escalation_reply(escalation_id: str, request: Request) -> JSONResponse:
    b = await _obj(request, {"content", "by"})
    out = await agents_of(request).answer_escalation(escalation_id, b.get("content"), b.get("by", "operator"))
    return JSONResponse(out)
