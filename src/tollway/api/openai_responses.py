"""``/v1/responses``: OpenAI's Responses API, as JSON or typed SSE events, over
the gateway's one chat call (the same charge path and request log as
``/v1/chat/completions``), with stored responses per customer
(``store``, ``previous_response_id``, ``GET``/``DELETE /v1/responses/{id}``).

The translations are :mod:`tollway.inference.responses_format`, the storage
:mod:`tollway.inference.response_store`; this module only calls and renders.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.shapes import JSONResponse
from tollway.billing.plans import AI_CHAT
from tollway.core.errors import TollwayError
from tollway.core.ids import new_id
from tollway.identity.keys import ApiKey
from tollway.inference import response_store
from tollway.inference.backends.base import Delta, Finish
from tollway.inference.call import Metered
from tollway.inference.responses_format import (
    EventStream,
    ResponsesRequest,
    chat_params,
    output_items,
    response_body,
)
from tollway.runtime import Runtime

router = APIRouter(route_class=JsonRoute, tags=["inference"])


@router.post("/v1/responses", summary="OpenAI-compatible Responses API (and typed SSE streaming)")
async def create_response(
    body: ResponsesRequest, request: Request, key: ApiKey = Depends(require_key)
) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    gw = rt.gateway
    p = await gw.admit(key, "responses", request.headers, body.model, body.stream, AI_CHAT)
    if body.user is not None or body.metadata:
        p.entry.end_user = body.user
        p.entry.tags = orjson.dumps(body.metadata).decode() if body.metadata else None
    items = []  # a refusal below is logged by the request log's middleware, as chat's
    if body.previous_response_id is not None:  # the stored conversation: its items count as input
        items = await response_store.items(rt.engine, rt.clock, key.customer_id, body.previous_response_id)
    items.extend(body.input_items())
    params = chat_params(body, items)
    norm = body.model_dump(mode="json", exclude_none=True)
    if body.previous_response_id is not None:
        norm["input"] = items  # the cache keys the whole conversation
    out = await gw.chat(rt.inference, p, body.model, params, body.max_output_tokens, norm, request.receive)
    rid = "resp_" + new_id("r")[2:]
    created = int(time.time())
    keep = body.store and key.keeps  # x402, an ownerless wallet's token: no customer to keep it for
    if out.events is not None:

        async def whole(output: list[dict[str, Any]], m: Metered | None) -> dict[str, Any]:
            r = response_body(rid, created, out.model, body, output, m)
            if keep:
                await response_store.put(rt.engine, rt.clock, key.customer_id, r, items + output, rt.ledger)
            return r

        gen = _stream(out.events, out.charged, response_body(rid, created, out.model, body, [], None), whole)
        headers = {"cache-control": "no-cache", **out.headers}
        return StreamingResponse(out.guard(gen), media_type="text/event-stream", headers=headers)
    m = out.metered
    assert m is not None
    output = output_items(out.text, out.tool_calls)
    r = response_body(rid, created, out.model, body, output, m)
    if keep:
        await response_store.put(rt.engine, rt.clock, key.customer_id, r, items + output, rt.ledger)
    return JSONResponse(r, headers={**out.headers, **m.headers()})


def _owner(request: Request, key: ApiKey) -> tuple[Runtime, str]:
    require_scope(key, "inference")
    return runtime(request), key.customer_id


@router.get("/v1/responses/{response_id}", summary="A stored response (this customer's)")
async def get_response(response_id: str, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    rt, customer = _owner(request, key)
    return JSONResponse(await response_store.get(rt.engine, rt.clock, customer, response_id))


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response (this customer's)")
async def delete_response(response_id: str, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    rt, customer = _owner(request, key)
    await response_store.remove(rt.engine, rt.clock, customer, response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def _stream(
    events: AsyncIterator[Delta | Finish],
    charged: Callable[[], Awaitable[Metered | None]],
    head: dict[str, Any],
    whole: Callable[[list[dict[str, Any]], Metered | None], Awaitable[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    s = EventStream()
    head["status"] = "in_progress"
    yield s.event("response.created", response=head)
    yield s.event("response.in_progress", response=head)
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                for piece in s.delta(ev):
                    yield piece
            elif isinstance(ev, Finish):
                for piece in s.finish(ev):
                    yield piece
        m = await charged()  # the charge is durable before the stream reports the usage
        r = await whole(s.output, m)
    except TollwayError as e:  # headers are gone: report in-band, then end
        err = e.to_dict()["error"]
        yield s.event("error", code=err["code"], message=err["message"], param=err["param"])
        raise
    yield s.event("response.completed", response=r)
