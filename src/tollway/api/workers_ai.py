"""``POST /ai/run/{model}``: Workers AI's ``run`` ({prompt} or {messages} for
chat, {text} for embeddings), over the gateway's calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.shapes import DONE, JSONResponse, chat_params, sse, tollway, usage
from tollway.billing.plans import AI_CHAT, AI_EMBEDDINGS
from tollway.core.errors import TollwayError, invalid
from tollway.identity.keys import ApiKey
from tollway.inference.backends.base import Delta, Finish
from tollway.inference.call import Metered
from tollway.inference.schemas import Message, RunRequest

router = APIRouter(route_class=JsonRoute, tags=["inference"])


@router.post(
    "/ai/run/{model:path}", summary="Workers AI-style: {prompt} or {messages} for chat, {text} for embeddings"
)
async def run(model: str, body: RunRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    gw, face = rt.gateway, rt.inference
    known = face.configs.get(model)
    feature = AI_EMBEDDINGS if known is not None and known.task == "embeddings" else AI_CHAT
    p = await gw.admit(key, "ai.run", request.headers, model, body.stream, feature)
    try:
        cfg = face.model(model)
        if cfg.task == "embeddings":
            if body.text is None or body.prompt is not None or body.messages is not None:
                raise invalid("invalid_input", f"model {model!r} takes {{text}}: a string or a list", "text")
            texts = [body.text] if isinstance(body.text, str) else body.text
            if not texts or any(not t for t in texts):
                raise invalid("invalid_input", "text must be a non-empty string or list of them", "text")
            e = await gw.embed(face, p, cfg, texts)
            dims = len(e.vectors[0]) if e.vectors else 0
            return _whole({"shape": [len(e.vectors), dims], "data": e.vectors}, e.metered, p.headers)
        if (body.prompt is None) == (body.messages is None) or body.text is not None:
            raise invalid(
                "invalid_input", f"model {model!r} takes exactly one of {{prompt}} or {{messages}}", "prompt"
            )
    except TollwayError as err:
        gw.fail(p.entry, err)
        raise
    messages = body.messages or [Message(role="user", content=body.prompt or "")]
    norm = body.model_dump(mode="json", exclude_none=True)
    out = await gw.chat(face, p, model, chat_params(messages, body), body.max_tokens, norm, request.receive)
    if out.events is not None:
        return StreamingResponse(
            out.guard(_stream(out.events, out.charged)),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **out.headers},
        )
    m = out.metered
    assert m is not None
    return _whole({"response": out.text, "usage": usage(m)}, m, out.headers)


def _whole(result: dict[str, Any], m: Metered, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(
        {"result": result, "success": True, "errors": [], "messages": [], "x_tollway": tollway(m)},
        headers={**headers, **m.headers()},
    )


async def _stream(
    events: AsyncIterator[Delta | Finish], charged: Callable[[], Awaitable[Metered | None]]
) -> AsyncIterator[bytes]:
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                yield sse({"response": ev.text})
        m = await charged()  # the charge is durable before the stream ends
    except TollwayError as e:
        yield sse(e.to_dict())
        yield DONE
        raise
    if m is not None:
        yield sse({"response": "", "usage": usage(m), "x_tollway": tollway(m)})
    yield DONE
