"""Any OpenAI-compatible upstream (vLLM, Ollama, a llama.cpp server, OpenAI).

This is the scale-out path: the same API, metering and charging, with the
model running elsewhere.  The key is read from the environment variable the
model's config names, never from the config file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tollway.core import jsonparse
from tollway.inference.backends.base import (
    Cancel,
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    UpstreamError,
    upstream_failed,
)
from tollway.inference.backends.http1 import TransportError
from tollway.inference.backends.pooled import PooledUpstream
from tollway.inference.config import ModelConfig

# Without the upstream's tokenizer, reserve for the worst case: a token is at
# least one byte, plus the chat template's overhead per message.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
_TEMPLATE_TOKENS = 16


# Failures of the transport itself (refused, reset, timed out): always worth a retry.
_TRANSPORT_ERRORS = (TransportError, OSError, asyncio.TimeoutError)


class OpenAIUpstream(PooledUpstream):
    """The HTTP client is :mod:`tollway.inference.backends.http1`: on the
    gateway's hot path a general-purpose client was the largest cost left
    (docs/benchmarks.md). Connections are pooled and kept alive; the pool is
    made on first use, inside the event loop."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(
            cfg,
            "openai",
            {"Accept": "application/json, text/event-stream"},
            lambda k: {"Authorization": f"Bearer {k}"},
        )

    def prompt_tokens(self, params: ChatParams) -> int:
        messages = params.messages
        size = sum(len((m.get("content") or "").encode()) for m in messages)
        size += sum(len(orjson.dumps(m["tool_calls"])) for m in messages if m.get("tool_calls"))
        return size + _TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + _TEMPLATE_TOKENS

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(t.encode()) + 2 for t in texts]

    def _body(self, params: ChatParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": params.messages,
            "max_tokens": params.max_tokens,
        }
        if params.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        for k in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            v = getattr(params, k)
            if v is not None:
                body[k] = v
        if params.stop:
            body["stop"] = params.stop
        if params.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": params.json_schema},
            }
        elif params.json_object:
            body["response_format"] = {"type": "json_object"}
        if params.tools:
            body["tools"] = params.tools
            if not params.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        if params.tool_choice is not None:
            body["tool_choice"] = params.tool_choice
        return body

    async def stream(
        self, params: ChatParams, cancel: Cancel, progress: Progress
    ) -> AsyncIterator[ChatEvent]:
        progress.prompt_tokens = self.prompt_tokens(params)
        produced_chunks = 0
        usage: dict[str, int] | None = None
        reason = "stop"
        try:
            r = await self.http.request("POST", "/chat/completions", orjson.dumps(self._body(params)))
            async with r:
                if r.status != 200:
                    detail = (await r.read()).decode(errors="replace")[:300]
                    raise upstream_failed(
                        self.provider, f"HTTP {r.status}: {detail}", retryable=_retryable(r.status)
                    )
                if not params.stream:  # one answer, read whole: no SSE to parse
                    whole = _object(self.provider, await r.read())
                    choice = _first(self.provider, whole.get("choices"))
                    message = choice.get("message")
                    message = message if isinstance(message, dict) else {}
                    text = message.get("content") or ""
                    if not isinstance(text, str):
                        raise _malformed(self.provider, "choices[0].message.content is not a string")
                    if text:
                        progress.completion_tokens = 1
                        yield Delta(text)
                    u = whole.get("usage")
                    u = u if isinstance(u, dict) else {}
                    calls = _calls(self.provider, message.get("tool_calls"))
                    yield Finish(
                        "tool_calls" if calls else str(choice.get("finish_reason") or "stop"),
                        _count(u.get("prompt_tokens")) or self.prompt_tokens(params),
                        _count(u.get("completion_tokens")) or (1 if text else 0),
                        calls,
                    )
                    return
                events = 0
                pieces: dict[int, dict[str, Any]] = {}  # streamed tool calls, by index
                async for line in r.lines():
                    if cancel.is_set():
                        reason = "cancelled"
                        break
                    if not line.startswith(b"data:"):
                        continue
                    events += 1
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = _object(self.provider, data)
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    choices = chunk.get("choices") or []
                    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                        raise _malformed(self.provider, "a chunk's choices are not a list of objects")
                    for choice in choices:
                        delta = choice.get("delta")
                        text = (delta.get("content") if isinstance(delta, dict) else None) or ""
                        if not isinstance(text, str):
                            raise _malformed(self.provider, "a chunk's delta.content is not a string")
                        if text:
                            produced_chunks += 1
                            progress.completion_tokens = produced_chunks
                            yield Delta(text)
                        if isinstance(delta, dict) and delta.get("tool_calls") is not None:
                            _merge_calls(self.provider, pieces, delta["tool_calls"])
                            produced_chunks += 1
                            progress.completion_tokens = produced_chunks
                        if choice.get("finish_reason"):
                            reason = choice["finish_reason"]
                if not events and reason != "cancelled":
                    raise _malformed(self.provider, "the body is not an event stream (no data: lines)")
        except _TRANSPORT_ERRORS as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        streamed = _calls(self.provider, [pieces[i] for i in sorted(pieces)]) if pieces else None
        if streamed and reason != "cancelled":
            reason = "tool_calls"
        if usage is not None:
            yield Finish(
                str(reason),
                _count(usage.get("prompt_tokens")) or self.prompt_tokens(params),
                _count(usage.get("completion_tokens")) or produced_chunks,
                streamed,
            )
        else:  # an upstream that does not report usage: count what we saw, bound the prompt
            yield Finish(reason, self.prompt_tokens(params), produced_chunks, streamed)

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int]:
        try:
            body = orjson.dumps({"model": self.model, "input": texts})
            async with await self.http.request("POST", "/embeddings", body) as r:
                raw = await r.read()
        except _TRANSPORT_ERRORS as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        if r.status != 200:
            raise upstream_failed(
                self.provider,
                f"HTTP {r.status}: {raw.decode(errors='replace')[:300]}",
                retryable=_retryable(r.status),
            )
        answer = _object(self.provider, raw)
        try:
            data = sorted(answer["data"], key=lambda d: int(d["index"]))
            vectors = [d["embedding"] for d in data]
        except (KeyError, TypeError, ValueError, OverflowError):
            raise _malformed(self.provider, "the body is not an embeddings list") from None
        if not all(isinstance(v, list) for v in vectors):
            raise _malformed(self.provider, "an embedding is not a list of numbers")
        if len(vectors) != len(texts):
            raise _malformed(self.provider, f"{len(vectors)} embeddings for {len(texts)} inputs")
        u = answer.get("usage")
        tokens = _count(u.get("prompt_tokens") if isinstance(u, dict) else None)
        return vectors, tokens or sum(self.token_counts(texts))


def _malformed(provider: str, why: str) -> UpstreamError:
    """A 200 that is not the answer asked for: a failed attempt (retried, then the fallbacks)."""
    return upstream_failed(provider, f"HTTP 200 but {why}")


def _object(provider: str, raw: bytes) -> dict[str, Any]:
    try:
        obj = jsonparse.loads(raw)
    except jsonparse.BadJson as e:
        raise _malformed(provider, f"the body is {e.message}: {raw[:100]!r}") from None
    if not isinstance(obj, dict):
        raise _malformed(provider, "the body is not a JSON object")
    return obj


def _first(provider: str, choices: Any) -> dict[str, Any]:
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed(provider, "choices is not a list of objects")
    first: dict[str, Any] = choices[0]
    return first


def _count(v: Any) -> int:
    """A token count an upstream reported, or 0 (then tollway's own bound applies)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31 else 0


def _retryable(status: int) -> bool:
    """Server errors, timeouts and rate limits are worth another try; other refusals are not."""
    return status >= 500 or status in (408, 409, 429)


def _calls(provider: str, raw: Any) -> list[dict[str, Any]] | None:
    """An upstream's tool calls, checked: each ``{id, type: function, function: {name,
    arguments}}`` with JSON-object arguments. A malformed one fails the attempt."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise _malformed(provider, "message.tool_calls is not a list")
    out: list[dict[str, Any]] = []
    for i, c in enumerate(raw):
        fn = c.get("function") if isinstance(c, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not c["id"]:
            raise _malformed(provider, f"tool_calls[{i}] has no id")
        if not isinstance(name, str) or not name or not isinstance(args, str):
            raise _malformed(provider, f"tool_calls[{i}].function needs a name and string arguments")
        try:
            parsed = orjson.loads(args or "{}")
        except orjson.JSONDecodeError:
            raise _malformed(provider, f"tool_calls[{i}].function.arguments is not JSON") from None
        if not isinstance(parsed, dict):
            raise _malformed(provider, f"tool_calls[{i}].function.arguments is not a JSON object")
        out.append({"id": c["id"], "type": "function", "function": {"name": name, "arguments": args}})
    return out


def _merge_calls(provider: str, pieces: dict[int, dict[str, Any]], deltas: Any) -> None:
    """Fold one chunk's ``delta.tool_calls`` into the calls so far (OpenAI streams
    each call's id and name first, then fragments of its arguments)."""
    if not isinstance(deltas, list):
        raise _malformed(provider, "a chunk's delta.tool_calls is not a list")
    for d in deltas:
        if not isinstance(d, dict) or not isinstance(d.get("index"), int):
            raise _malformed(provider, "a streamed tool call has no index")
        call = pieces.setdefault(
            d["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(d.get("id"), str):
            call["id"] = d["id"]
        fn = d.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                call["function"]["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["function"]["arguments"] += fn["arguments"]
