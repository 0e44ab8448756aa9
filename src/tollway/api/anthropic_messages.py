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
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.routing import Route

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


class AnthropicErrorDetail(BaseModel):
    type: str  # invalid_request_error, authentication_error, billing_error, ...
    message: str


class AnthropicErrorBody(BaseModel):
    """Anthropic's error shape, on this route only."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": AnthropicErrorBody, "description": "Error, in Anthropic's shape"}
    for s in (400, 401, 402, 403, 404, 429, 500, 502, 503)
}
router = APIRouter(route_class=JsonRoute, tags=["inference"], responses=_ERRORS)


@router.post(
    "/v1/messages",
    summary="Anthropic-compatible Messages API (and SSE streaming)",
    response_class=JSONResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def messages(request: Request) -> Response:
    try:
        return await _messages(request)
    except TollwayError as e:
        return JSONResponse(anthropic_error(e), status_code=e.status, headers=e.headers or None)
    except Exception:  # never a bare 500: Anthropic's api_error
        log.exception("POST /v1/messages failed")
        err = TollwayError(ErrorType.API, "internal_error", "Internal server error")
        return JSONResponse(anthropic_error(err), status_code=500)


class _OtherMethods:
    """The route's other methods (any of them, hence an ASGI app: Starlette gives a
    function endpoint GET only): a 405, in Anthropic's shape too."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        err = TollwayError(ErrorType.INVALID_REQUEST, "method_not_allowed", "Method Not Allowed", status=405)
        response = JSONResponse(anthropic_error(err), status_code=405, headers={"allow": "POST"})
        await response(scope, receive, send)


router.routes.append(Route("/v1/messages", _OtherMethods(), include_in_schema=False))


async def _messages(request: Request) -> Response:
    key = await require_key(request)  # Authorization: Bearer or x-api-key
    require_scope(key, "inference")
    body = jsonparse.body(await request.body())
    req = parse_request(body)
    params = req.params
    rt = runtime(request)
    gw = rt.gateway
    p = await gw.admit(key, "messages", request.headers, req.model, params.stream, AI_CHAT)
    if req.user is not None:
        p.entry.end_user = req.user  # metadata.user_id: kept in the request log
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
