"""``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``, ``/v1/usage``
(OpenAI-compatible) and ``/ai/run/{model}`` (Workers AI-style)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.billing.plans import AI_CHAT, AI_EMBEDDINGS
from tollway.core.errors import ErrorType, TollwayError, invalid
from tollway.core.ids import new_id
from tollway.core.money import price_micros
from tollway.gateway.cache import Entry as CacheEntry
from tollway.gateway.cache import cache_key
from tollway.gateway.gate import Gateway, Pass
from tollway.identity.keys import ApiKey
from tollway.inference.backends.base import ChatParams, Delta, Finish
from tollway.inference.config import ModelConfig
from tollway.inference.schemas import ChatRequest, EmbeddingsRequest, Message, RunRequest
from tollway.inference.service import Caller, ChatCall, Inference, Metered
from tollway.inference.usage import rollup
from tollway.runtime import Runtime


class JSONResponse(Response):
    """JSON rendered with orjson: the AI routes' bodies are on the hot path."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


router = APIRouter(route_class=JsonRoute, tags=["inference"])
log = logging.getLogger("tollway.inference")

Lead = asyncio.Future[CacheEntry | None]  # a cache leader's promise to its followers
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


async def caller(request: Request, key: ApiKey = Depends(require_key)) -> Caller:
    require_scope(key, "inference")
    return Caller(key.customer_id, key.account_id, key.id)


async def _who(gw: Gateway, p: Pass) -> Caller:
    """Who pays for a request through the gateway: its plan, quotas and budgets."""
    k = p.key
    return Caller(k.customer_id, k.account_id, k.id, await gw.caps(p), k.prepaid, p.standing)


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
        stream=body.stream,
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


async def _committed(m: Metered | None) -> None:
    """Join a settle that was started before the response went out (the
    ``fast`` acknowledgement). It runs after the response is sent and before
    the request ends, so the next request on the connection is not held up,
    and a test client (which waits for the whole request) reads its own writes."""
    if m is None or m.committing is None:
        return
    try:
        await asyncio.shield(m.committing)
    except Exception:  # the hold stays pending and expires: the call goes uncharged
        log.exception("a settle failed after its response was sent")


async def acknowledged(svc: Inference, m: Metered | None) -> None:
    """The durable acknowledgement (``[ledger] acknowledge = "durable"``, the
    default): wait until the call's settle has committed, before anything that
    reports its charge is sent. A settle that did not commit is a 503 (the
    reservation expires: the call goes uncharged, the ledger stays exact)."""
    if svc.linger or m is None or m.committing is None:
        return
    try:
        await asyncio.shield(m.committing)
    except TollwayError:
        raise
    except Exception as e:
        log.exception("a settle failed before its response")
        raise TollwayError(
            ErrorType.API, "database_unavailable", "the charge could not be recorded; retry", status=503
        ) from e


def _after(m: Metered | None) -> BackgroundTask | None:
    if m is None or m.committing is None or m.committing.done():
        return None
    return BackgroundTask(_committed, m)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


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
async def chat_completions(body: ChatRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    p = await rt.gateway.admit(key, "chat.completions", request.headers, body.model, body.stream, AI_CHAT)
    usage = body.stream_options is not None and body.stream_options.include_usage
    norm = body.model_dump(mode="json", exclude_none=True)
    return await _chat(
        request, p, body.model, body.messages, body, body.requested_max_tokens(), "openai", usage, norm
    )


async def _chat(
    request: Request,
    p: Pass,
    model: str,
    messages: list[Message],
    body: ChatRequest | RunRequest,
    requested_max: int | None,
    shape: str,
    usage: bool,
    norm: dict[str, Any],
) -> Any:
    """One chat call through the gateway: cache, budgets (or a downgrade), the
    call with its retries and fallbacks, then the log; ``shape`` is ``openai``
    or ``workers``."""
    rt = runtime(request)
    gw, svc = rt.gateway, rt.inference
    stream = body.stream
    ck: str | None = None
    lead: Lead | None = None
    try:
        cfg = svc.model(model, "chat")
        if p.cache.active:
            ck = cache_key(p.key.customer_id, "chat", cfg.name, norm, p.cache.key)
            hit, lead = await gw.cache.lookup(ck)
            if hit is not None:
                return await _replay(request, p, hit, shape, stream, usage)
        p.entry.cache = "MISS"
        who = await _who(gw, p)
        try:
            call = await svc.start_chat(who, cfg, _params(messages, body), requested_max)
        except TollwayError as e:
            down = p.downgrade_model
            if e.code != "budget_exceeded" or down is None or down == cfg.name:
                raise
            p.entry.downgraded_from = cfg.name
            cfg = svc.model(down, "chat")
            call = await svc.start_chat(who, cfg, _params(messages, body), requested_max)
    except BaseException as e:
        if ck is not None and lead is not None:
            await _unlead(gw, ck, lead)
        if isinstance(e, TollwayError):
            gw.fail(p.entry, e)
        raise
    p.headers.update(
        {
            "x-tollway-model": cfg.name,
            "x-tollway-provider": call.provider,
            "x-tollway-attempts": str(call.attempts),
            "x-tollway-cache": "MISS",
        }
    )
    if p.entry.downgraded_from:
        p.headers["x-tollway-downgraded-from"] = p.entry.downgraded_from
    end = _End(gw, p, call, ck, lead)
    cid = "chatcmpl-" + new_id("c")[2:]
    created = int(time.time())
    if stream:
        events = end.track(call.events(stream=True))

        async def metered() -> Metered | None:
            await acknowledged(svc, call.metered)
            return call.metered

        gen = (
            _openai_stream(events, metered, cid, created, cfg.name, usage)
            if shape == "openai"
            else _workers_stream(events, metered)
        )
        return StreamingResponse(
            end.guard(gen), media_type="text/event-stream", headers={"cache-control": "no-cache", **p.headers}
        )
    try:
        text, m = await _collect_unless_gone(request, call, end)
        await acknowledged(svc, m)
    except BaseException as e:
        await end.done(e)
        raise
    await end.done(None)
    headers = {**p.headers, **m.headers()}
    if shape == "openai":
        return JSONResponse(
            _openai_json(cid, created, cfg.name, text, m), headers=headers, background=_after(m)
        )
    return _workers({"response": text, "usage": _usage(m)}, m, headers)


class _End:
    """What happens when a call ends, however it ends: log it, book its tokens
    against the rate limits, and (as the cache leader) store or give up its entry."""

    def __init__(
        self,
        gw: Gateway,
        p: Pass,
        call: ChatCall,
        ck: str | None,
        lead: Lead | None,
    ) -> None:
        self.gw, self.p, self.call, self.ck, self.lead = gw, p, call, ck, lead
        self.pieces: list[str] = []
        self.ended = False

    async def track(self, events: AsyncIterator[Delta | Finish]) -> AsyncIterator[Delta | Finish]:
        async for ev in events:
            if isinstance(ev, Delta):
                self.pieces.append(ev.text)
            yield ev

    async def guard(self, gen: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        err: BaseException | None = None
        try:
            async for chunk in gen:
                yield chunk
        except BaseException as e:
            err = e
            raise
        finally:
            await self.done(err)
            await _committed(self.call.metered)

    async def done(self, err: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        e, m, call = self.p.entry, self.call.metered, self.call
        e.attempts, e.deployment = call.attempts, call.provider
        if m is not None:
            e.input_tokens, e.output_tokens, e.mneurons, e.cost = (
                m.input_tokens,
                m.output_tokens,
                m.mneurons,
                m.charged,
            )
            e.ttft_ms = None if m.ttft_ms is None else round(m.ttft_ms)
            await self.gw.book_tokens(self.p, m.input_tokens + m.output_tokens)
        if isinstance(err, TollwayError):
            e.status, e.error_code = err.status, err.code
        elif err is not None or (m is not None and m.finish_reason == "cancelled"):
            e.status, e.error_code = 499, "client_closed_request"
        self.gw.log.record(e)
        if self.ck is None or self.lead is None:
            return
        if e.status == 200 and m is not None:
            entry = CacheEntry(self.pieces, m.input_tokens, m.output_tokens, m.finish_reason, m.deployment)
            await self.gw.cache.put(self.ck, entry, self.p.cache.ttl_s)
            self.gw.cache.finish(self.ck, self.lead, entry)
            await self.gw.cache.release_remote(self.ck)
        else:
            await _unlead(self.gw, self.ck, self.lead)


async def _unlead(gw: Gateway, ck: str, lead: Lead) -> None:
    gw.cache.finish(ck, lead, None)
    await gw.cache.release_remote(ck)


async def _replay(request: Request, p: Pass, hit: CacheEntry, shape: str, stream: bool, usage: bool) -> Any:
    """Answer from the cache: charged the cache price (free by default), logged as a HIT."""
    rt = runtime(request)
    gw = rt.gateway
    charged = 0
    if gw.cache_hit_price:
        who = await _who(gw, p)
        charged = await rt.inference.charge_flat(who, gw.cache_hit_price, "cache_hit", p.entry.model or "")
    e = p.entry
    e.cache, e.deployment, e.attempts, e.cost = "HIT", hit.deployment, 0, charged
    e.input_tokens, e.output_tokens = hit.prompt_tokens, hit.completion_tokens
    e.ttft_ms = 0
    gw.log.record(e)
    m = Metered(
        hit.prompt_tokens, hit.completion_tokens, 0, charged, 0.0, 0.0, hit.finish_reason, hit.deployment
    )
    headers = {
        **p.headers,
        "x-tollway-model": e.model or "",
        "x-tollway-provider": hit.deployment,
        "x-tollway-attempts": "0",
        "x-tollway-cache": "HIT",
        **m.headers(),
    }
    model = e.model or ""
    cid = "chatcmpl-" + new_id("c")[2:]
    created = int(time.time())
    text = "".join(hit.pieces)
    if stream:

        async def events() -> AsyncIterator[Delta | Finish]:
            for piece in hit.pieces:
                yield Delta(piece)
            yield Finish(hit.finish_reason, hit.prompt_tokens, hit.completion_tokens)

        async def metered() -> Metered | None:
            return m

        gen = (
            _openai_stream(events(), metered, cid, created, model, usage)
            if shape == "openai"
            else _workers_stream(events(), metered)
        )
        return StreamingResponse(
            gen, media_type="text/event-stream", headers={"cache-control": "no-cache", **headers}
        )
    if shape == "openai":
        return JSONResponse(_openai_json(cid, created, model, text, m), headers=headers)
    return _workers({"response": text, "usage": _usage(m)}, m, headers)


def _openai_json(cid: str, created: int, model: str, text: str, m: Metered) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
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
    }


async def _collect_unless_gone(request: Request, call: ChatCall, end: _End) -> tuple[str, Metered]:
    """Collect a whole generation, but stop (charging only what was produced) if
    the client disconnects first: Starlette does not cancel handlers itself."""
    work = asyncio.ensure_future(_collect(call, end))

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


async def _collect(call: ChatCall, end: _End) -> tuple[str, Metered]:
    async for _ in end.track(call.events(stream=False)):
        pass
    assert call.metered is not None
    return "".join(end.pieces), call.metered


async def _openai_stream(
    events: AsyncIterator[Delta | Finish],
    metered: Callable[[], Awaitable[Metered | None]],
    cid: str,
    created: int,
    model: str,
    usage: bool,
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
        return _sse(piece(delta))

    yield chunk({"role": "assistant", "content": ""})
    finish: str | None = None
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, Finish):
                finish = _FINISH.get(ev.reason, "stop")
        m = await metered()  # the charge is durable before the stream reports it
    except TollwayError as e:  # headers are gone: report in-band, then end
        yield _sse(e.to_dict())
        yield b"data: [DONE]\n\n"
        raise
    if finish is not None:  # the final chunk carries the charge, with or without include_usage
        last = piece({}, finish)
        if m is not None:
            last["x_tollway"] = _tollway(m)
        yield _sse(last)
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
async def embeddings(body: EmbeddingsRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    p = await rt.gateway.admit(key, "embeddings", request.headers, body.model, False, AI_EMBEDDINGS)
    try:
        cfg = rt.inference.model(body.model, "embeddings")
        if body.dimensions is not None:
            raise invalid("unsupported_parameter", "dimensions is not supported by this model", "dimensions")
        vectors, m = await _embed(rt, p, cfg, body.texts())
        await acknowledged(rt.inference, m)
    except TollwayError as e:
        rt.gateway.fail(p.entry, e)
        raise
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
        headers={**p.headers, **m.headers()},
        background=_after(m),
    )


async def _embed(
    rt: Runtime, p: Pass, cfg: ModelConfig, texts: list[str]
) -> tuple[list[list[float]], Metered]:
    who = await _who(rt.gateway, p)
    vectors, m = await rt.inference.embed(who, cfg, texts)
    e = p.entry
    e.deployment, e.attempts = m.deployment, m.attempts
    e.input_tokens, e.mneurons, e.cost = m.input_tokens, m.mneurons, m.charged
    p.headers.update(
        {
            "x-tollway-model": cfg.name,
            "x-tollway-provider": m.deployment,
            "x-tollway-attempts": str(m.attempts),
        }
    )
    await rt.gateway.book_tokens(p, m.input_tokens)
    rt.gateway.log.record(e)
    return vectors, m


def _encode(v: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
    return v


@router.post(
    "/ai/run/{model:path}", summary="Workers AI-style: {prompt} or {messages} for chat, {text} for embeddings"
)
async def run(model: str, body: RunRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    known = rt.inference.configs.get(model)
    feature = AI_EMBEDDINGS if known is not None and known.task == "embeddings" else AI_CHAT
    p = await rt.gateway.admit(key, "ai.run", request.headers, model, body.stream, feature)
    try:
        cfg = rt.inference.model(model)
        if cfg.task == "embeddings":
            if body.text is None or body.prompt is not None or body.messages is not None:
                raise invalid("invalid_input", f"model {model!r} takes {{text}}: a string or a list", "text")
            texts = [body.text] if isinstance(body.text, str) else body.text
            if not texts or any(not t for t in texts):
                raise invalid("invalid_input", "text must be a non-empty string or list of them", "text")
            vectors, m = await _embed(rt, p, cfg, texts)
            await acknowledged(rt.inference, m)
            dims = len(vectors[0]) if vectors else 0
            return _workers({"shape": [len(vectors), dims], "data": vectors}, m, p.headers)
        if (body.prompt is None) == (body.messages is None) or body.text is not None:
            raise invalid(
                "invalid_input", f"model {model!r} takes exactly one of {{prompt}} or {{messages}}", "prompt"
            )
    except TollwayError as e:
        rt.gateway.fail(p.entry, e)
        raise
    messages = body.messages or [Message(role="user", content=body.prompt or "")]
    norm = body.model_dump(mode="json", exclude_none=True)
    return await _chat(request, p, model, messages, body, body.max_tokens, "workers", False, norm)


def _workers(result: dict[str, Any], m: Metered, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"result": result, "success": True, "errors": [], "messages": [], "x_tollway": _tollway(m)},
        headers={**(headers or {}), **m.headers()},
        background=_after(m),
    )


async def _workers_stream(
    events: AsyncIterator[Delta | Finish], metered: Callable[[], Awaitable[Metered | None]]
) -> AsyncIterator[bytes]:
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                yield _sse({"response": ev.text})
        m = await metered()  # the charge is durable before the stream ends
    except TollwayError as e:
        yield _sse(e.to_dict())
        yield b"data: [DONE]\n\n"
        raise
    if m is not None:
        yield _sse({"response": "", "usage": _usage(m), "x_tollway": _tollway(m)})
    yield b"data: [DONE]\n\n"


@router.get("/v1/usage", summary="Today's usage and remaining free allocation for the calling customer")
async def usage(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    rt = runtime(request)
    today = dt.datetime.fromtimestamp(rt.clock.now_us() / 1e6, dt.UTC).date()
    rows = await rollup(rt.engine, today, who.customer_id)
    s = await rt.billing.standing_of(who.customer_id)
    per_1000 = s.rate
    daily = price_micros(s.plan.daily_neurons * 1000, per_1000)
    remaining = await rt.billing.daily.remaining(who.customer_id, daily)
    prepaid = await rt.ledger.get_account(who.account_id)
    return {
        "object": "usage",
        "customer_id": who.customer_id,
        "date": today.isoformat(),
        "plan": s.plan.lookup_key,
        "allocation": {
            "neurons_per_day": s.plan.daily_neurons,
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


async def quote(rt: Runtime, path: str, body: Any) -> int:
    """The most one request to an AI route can cost, in micro-USD (x402's price
    for a rule with ``price_by = "ai_max_cost"``). A bad body is refused here,
    with the route's own error, before anyone is asked to pay."""
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from tollway.api.errors import validation_error

    svc = rt.inference
    try:
        if path == "/v1/embeddings":
            emb = EmbeddingsRequest.model_validate(body)
            return (await svc.plan_embed(svc.model(emb.model, "embeddings"), emb.texts()))[1]
        if path == "/v1/chat/completions":
            chat = ChatRequest.model_validate(body)
            cfg = svc.model(chat.model, "chat")
            return (await svc.plan_chat(cfg, _params(chat.messages, chat), chat.requested_max_tokens()))[1]
    except ValidationError as e:
        raise validation_error(RequestValidationError(e.errors())) from None
    raise invalid("unsupported_route", f"{path} cannot be priced by its maximum cost", "path")
