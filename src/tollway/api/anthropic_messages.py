"""``POST /v1/messages``: Anthropic's Messages API, as JSON or SSE, over the
gateway's one chat call (the same charge path and request log as
``/v1/chat/completions``).

The translations are :mod:`tollway.inference.anthropic_messages`; this module
only authenticates (``x-api-key`` or ``Authorization: Bearer``, any
``anthropic-version``), calls the gateway and renders. Every error on this
route, from a malformed body to a refused charge, leaves in Anthropic's shape
``{"type": "error", "error": {"type", "message"}}`` with its status; one after
a stream has begun is an ``error`` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.shapes import JSONResponse
from tollway.billing.plans import AI_CHAT
from tollway.core import jsonparse
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.ids import new_id
from tollway.inference.anthropic_messages import (
    MessageStream,
    anthropic_error,
    error_event,
    message_body,
    parse_request,
)
from tollway.inference.backends.base import Delta, Finish
from tollway.inference.call import Metered

log = logging.getLogger("tollway.api")

router = APIRouter(route_class=JsonRoute, tags=["inference"])


@router.post("/v1/messages", summary="Anthropic-compatible Messages API (and SSE streaming)")
async def messages(request: Request) -> Response:
    try:
        return await _messages(request)
    except TollwayError as e:
        return JSONResponse(anthropic_error(e), status_code=e.status, headers=e.headers or None)
    except Exception:  # never a bare 500: Anthropic's api_error
        log.exception("POST /v1/messages failed")
        err = TollwayError(ErrorType.API, "internal_error", "Internal server error")
        return JSONResponse(anthropic_error(err), status_code=500)


async def _messages(request: Request) -> Response:
    key = await require_key(request)  # Authorization: Bearer or x-api-key
    require_scope(key, "inference")
    body = jsonparse.body(await request.body())
    req = parse_request(body)
    params = req.params
    rt = runtime(request)
    gw = rt.gateway
    p = await gw.admit(key, "messages", request.headers, req.model, params.stream, AI_CHAT)
    out = await gw.chat(rt.inference, p, req.model, params, params.max_tokens, body, request.receive)
    mid = "msg_" + new_id("m")[2:]
    if out.events is not None:
        gen = _stream(out.events, out.charged, MessageStream(mid, out.model, 0))
        headers = {"cache-control": "no-cache", **out.headers}
        return StreamingResponse(out.guard(gen), media_type="text/event-stream", headers=headers)
    m = out.metered
    assert m is not None
    reason = "tool_calls" if out.tool_calls else m.finish_reason
    finish = Finish(reason, m.input_tokens, m.output_tokens, out.tool_calls)
    return JSONResponse(
        message_body(mid, out.model, out.text, finish), headers={**out.headers, **m.headers()}
    )


async def _stream(
    events: AsyncIterator[Delta | Finish],
    charged: Callable[[], Awaitable[Metered | None]],
    stream: MessageStream,
) -> AsyncIterator[bytes]:
    # The prompt's tokens are known at the end: message_start says 0, message_delta the count.
    yield stream.start()
    finish: Finish | None = None
    try:
        async for ev in events:
            if isinstance(ev, Finish):
                finish = ev
            elif piece := stream.event(ev):
                yield piece
        m = await charged()  # the charge is durable before the stream reports the usage
    except TollwayError as e:  # headers are gone: report in-band, then end
        yield error_event(e)
        raise
    if finish is not None:
        calls = finish.tool_calls
        reason = "tool_calls" if calls else finish.reason
        if m is not None:
            finish = Finish(reason, m.input_tokens, m.output_tokens, calls)
        else:
            finish = Finish(reason, finish.prompt_tokens, finish.completion_tokens, calls)
        yield stream.finish(finish)
