"""``POST /v1/chat/completions``: OpenAI's chat completions, as JSON or SSE,
over the gateway's one chat call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.shapes import DONE, FINISH, JSONResponse, chat_params, sse, tollway, usage
from tollway.billing.plans import AI_CHAT
from tollway.core.errors import TollwayError
from tollway.core.ids import new_id
from tollway.identity.keys import ApiKey
from tollway.inference.backends.base import Delta, Finish
from tollway.inference.call import Metered
from tollway.inference.schemas import ChatRequest

router = APIRouter(route_class=JsonRoute, tags=["inference"])


@router.post("/v1/chat/completions", summary="OpenAI-compatible chat completions (and SSE streaming)")
async def chat_completions(body: ChatRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    gw = rt.gateway
    p = await gw.admit(key, "chat.completions", request.headers, body.model, body.stream, AI_CHAT)
    if body.user is not None or body.metadata:
        p.entry.end_user = body.user
        p.entry.tags = orjson.dumps(body.metadata).decode() if body.metadata else None
    params = chat_params(body.messages, body)
    norm = body.model_dump(mode="json", exclude_none=True)
    out = await gw.chat(
        rt.inference, p, body.model, params, body.requested_max_tokens(), norm, request.receive
    )
    cid = "chatcmpl-" + new_id("c")[2:]
    created = int(time.time())
    if out.events is not None:
        usage_chunk = body.stream_options is not None and body.stream_options.include_usage
        gen = _stream(out.events, out.charged, cid, created, out.model, usage_chunk)
        headers = {"cache-control": "no-cache", **out.headers}
        return StreamingResponse(out.guard(gen), media_type="text/event-stream", headers=headers)
    m = out.metered
    assert m is not None
    whole = _whole(cid, created, out.model, out.text, m, out.tool_calls)
    return JSONResponse(whole, headers={**out.headers, **m.headers()})


def _whole(
    cid: str, created: int, model: str, text: str, m: Metered, calls: list[dict[str, Any]] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = FINISH.get(m.finish_reason, "stop")
    if calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": calls}
        finish = "tool_calls"
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage(m),
        "x_tollway": tollway(m),
    }


async def _stream(
    events: AsyncIterator[Delta | Finish],
    charged: Callable[[], Awaitable[Metered | None]],
    cid: str,
    created: int,
    model: str,
    usage_chunk: bool,
) -> AsyncIterator[bytes]:
    def piece(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def chunk(delta: dict[str, Any]) -> bytes:
        return sse(piece(delta))

    yield chunk({"role": "assistant", "content": ""})
    finish: str | None = None
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, Finish):
                finish = FINISH.get(ev.reason, "stop")
                for i, call in enumerate(ev.tool_calls or ()):  # as OpenAI streams them: head, then arguments
                    fn = call.get("function") or {}
                    head = {"index": i, "id": call.get("id"), "type": "function"}
                    head["function"] = {"name": fn.get("name"), "arguments": ""}
                    yield chunk({"tool_calls": [head]})
                    yield chunk(
                        {"tool_calls": [{"index": i, "function": {"arguments": fn.get("arguments", "")}}]}
                    )
                if ev.tool_calls:
                    finish = "tool_calls"
        m = await charged()  # the charge is durable before the stream reports it
    except TollwayError as e:  # headers are gone: report in-band, then end
        yield sse(e.to_dict())
        yield DONE
        raise
    if finish is not None:  # the final chunk carries the charge, with or without include_usage
        last = piece({}, finish)
        if m is not None:
            last["x_tollway"] = tollway(m)
        yield sse(last)
    if usage_chunk and m is not None:
        yield sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(m),
                "x_tollway": tollway(m),
            }
        )
    yield DONE
