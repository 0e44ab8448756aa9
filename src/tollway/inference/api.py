"""``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``, ``/v1/usage``
(OpenAI-compatible) and ``/ai/run/{model}`` (Workers AI-style)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tollway.api.auth import require_key, require_scope, runtime
from tollway.core.errors import TollwayError, invalid
from tollway.core.ids import new_id
from tollway.identity.keys import ApiKey
from tollway.inference.backends.base import ChatParams, Delta, Finish
from tollway.inference.schemas import ChatRequest, EmbeddingsRequest, Message, RunRequest
from tollway.inference.service import Caller, ChatCall, Inference, Metered
from tollway.inference.usage import rollup

router = APIRouter(tags=["inference"])

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


async def caller(request: Request, key: ApiKey = Depends(require_key)) -> Caller:
    require_scope(key, "inference")
    customer = await runtime(request).customers.get(key.customer_id)
    return Caller(customer.id, customer.account_id, key.id)


def inference(request: Request) -> Inference:
    svc: Inference = runtime(request).inference
    return svc


def _params(messages: list[Message], body: ChatRequest | RunRequest) -> ChatParams:
    p = ChatParams(
        messages=[
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
        ],
        max_tokens=0,
        temperature=body.temperature,
    )
    if isinstance(body, ChatRequest):
        p.top_p = body.top_p
        p.stop = body.stops()
        p.seed = body.seed
        p.presence_penalty = body.presence_penalty
        p.frequency_penalty = body.frequency_penalty
        rf = body.response_format
        if rf is not None and rf.type == "json_schema":
            assert rf.json_schema is not None
            p.json_schema = rf.json_schema.schema_
        elif rf is not None and rf.type == "json_object":
            p.json_object = True
    return p


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _usage(m: Metered) -> dict[str, Any]:
    return {
        "prompt_tokens": m.input_tokens,
        "completion_tokens": m.output_tokens,
        "total_tokens": m.input_tokens + m.output_tokens,
    }


def _tollway(m: Metered) -> dict[str, Any]:
    return {"neurons": m.mneurons / 1000, "charged": m.charged, "ttft_ms": m.ttft_ms}


@router.get("/v1/models", summary="The model registry")
async def models(request: Request, _: ApiKey = Depends(require_key)) -> dict[str, Any]:
    svc = inference(request)
    return {
        "object": "list",
        "data": [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "tollway",
                "task": m.task,
                "backend": m.backend,
                "context_length": m.n_ctx,
                "max_tokens": m.max_tokens if m.task == "chat" else None,
                "pricing": {
                    "neurons_per_m_input_tokens": m.neurons_per_m_input,
                    "neurons_per_m_output_tokens": m.neurons_per_m_output,
                    "usd_micros_per_1000_neurons": svc.micros_per_1000_neurons,
                },
            }
            for m in svc.configs.values()
        ],
    }


@router.post("/v1/chat/completions", summary="OpenAI-compatible chat completions (and SSE streaming)")
async def chat_completions(body: ChatRequest, request: Request, who: Caller = Depends(caller)) -> Any:
    svc = inference(request)
    cfg = svc.model(body.model, "chat")
    call = await svc.start_chat(who, cfg, _params(body.messages, body), body.requested_max_tokens())
    cid = "chatcmpl-" + new_id("c")[2:]
    created = int(time.time())
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _openai_stream(call, cid, created, cfg.name, usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-tollway-model": cfg.name},
        )
    text, m = await _collect_unless_gone(request, call)
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": cfg.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": _FINISH.get(m.finish_reason, "stop"),
                    "logprobs": None,
                }
            ],
            "usage": _usage(m),
            "x_tollway": _tollway(m),
        },
        headers=m.headers(),
    )


async def _collect_unless_gone(request: Request, call: ChatCall) -> tuple[str, Metered]:
    """Collect a whole generation, but stop (charging only what was produced) if
    the client disconnects first: Starlette does not cancel handlers itself."""
    work = asyncio.ensure_future(_collect(call))

    async def watch() -> None:
        while True:
            if (await request.receive())["type"] == "http.disconnect":
                work.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    finally:
        watcher.cancel()


async def _collect(call: ChatCall) -> tuple[str, Metered]:
    parts: list[str] = []
    async for ev in call.events(stream=False):
        if isinstance(ev, Delta):
            parts.append(ev.text)
    assert call.metered is not None
    return "".join(parts), call.metered


async def _openai_stream(
    call: ChatCall, cid: str, created: int, model: str, usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for ev in call.events(stream=True):
            if isinstance(ev, Delta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, Finish):
                yield chunk({}, _FINISH.get(ev.reason, "stop"))
    except TollwayError as e:  # headers are gone: report in-band, then end
        yield _sse(e.to_dict())
        yield b"data: [DONE]\n\n"
        return
    m = call.metered
    if usage and m is not None:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(m),
                "x_tollway": _tollway(m),
            }
        )
    yield b"data: [DONE]\n\n"


@router.post("/v1/embeddings", summary="OpenAI-compatible embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request, who: Caller = Depends(caller)) -> Any:
    svc = inference(request)
    cfg = svc.model(body.model, "embeddings")
    if body.dimensions is not None:
        raise invalid("unsupported_parameter", "dimensions is not supported by this model", "dimensions")
    vectors, m = await svc.embed(who, cfg, body.texts())
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": cfg.name,
            "usage": {"prompt_tokens": m.input_tokens, "total_tokens": m.input_tokens},
            "x_tollway": _tollway(m),
        },
        headers=m.headers(),
    )


def _encode(v: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
    return v


@router.post(
    "/ai/run/{model:path}", summary="Workers AI-style: {prompt} or {messages} for chat, {text} for embeddings"
)
async def run(model: str, body: RunRequest, request: Request, who: Caller = Depends(caller)) -> Any:
    svc = inference(request)
    cfg = svc.model(model)
    if cfg.task == "embeddings":
        if body.text is None or body.prompt is not None or body.messages is not None:
            raise invalid("invalid_input", f"model {model!r} takes {{text}}: a string or a list", "text")
        texts = [body.text] if isinstance(body.text, str) else body.text
        if not texts or any(not t for t in texts):
            raise invalid("invalid_input", "text must be a non-empty string or list of them", "text")
        vectors, m = await svc.embed(who, cfg, texts)
        dims = len(vectors[0]) if vectors else 0
        return _workers({"shape": [len(vectors), dims], "data": vectors}, m)
    if (body.prompt is None) == (body.messages is None) or body.text is not None:
        raise invalid(
            "invalid_input", f"model {model!r} takes exactly one of {{prompt}} or {{messages}}", "prompt"
        )
    messages = body.messages or [Message(role="user", content=body.prompt or "")]
    call = await svc.start_chat(who, cfg, _params(messages, body), body.max_tokens)
    if body.stream:
        return StreamingResponse(_workers_stream(call), media_type="text/event-stream")
    text, m = await _collect_unless_gone(request, call)
    return _workers({"response": text, "usage": _usage(m)}, m)


def _workers(result: dict[str, Any], m: Metered) -> JSONResponse:
    return JSONResponse(
        {"result": result, "success": True, "errors": [], "messages": [], "x_tollway": _tollway(m)},
        headers=m.headers(),
    )


async def _workers_stream(call: ChatCall) -> AsyncIterator[bytes]:
    try:
        async for ev in call.events(stream=True):
            if isinstance(ev, Delta):
                yield _sse({"response": ev.text})
    except TollwayError as e:
        yield _sse(e.to_dict())
    if call.metered is not None:
        yield _sse({"response": "", "usage": _usage(call.metered)})
    yield b"data: [DONE]\n\n"


@router.get("/v1/usage", summary="Today's usage and remaining free allocation for the calling customer")
async def usage(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    rt = runtime(request)
    svc = inference(request)
    today = dt.datetime.fromtimestamp(rt.clock.now_us() / 1e6, dt.UTC).date()
    rows = await rollup(rt.engine, today, who.customer_id)
    remaining = await svc.allowance.remaining(who.customer_id)
    prepaid = await rt.ledger.get_account(who.account_id)
    per_1000 = svc.micros_per_1000_neurons
    return {
        "object": "usage",
        "customer_id": who.customer_id,
        "date": today.isoformat(),
        "allocation": {
            "neurons_per_day": svc.free_neurons_per_day,
            "remaining_neurons": remaining * 1000 // per_1000 if per_1000 else 0,
            "remaining": remaining,
            "resets_at": (dt.datetime.combine(today, dt.time(), dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        "prepaid": {"balance": prepaid.balance, "available": prepaid.available},
        "today": {
            "requests": sum(r["requests"] for r in rows),
            "neurons": sum(r["mneurons"] for r in rows) / 1000,
            "charged": sum(r["charged"] for r in rows),
            "by_model": [{k: v for k, v in r.items() if k not in ("customer_id", "mneurons")} for r in rows],
        },
    }
