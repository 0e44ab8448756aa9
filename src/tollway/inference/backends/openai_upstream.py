"""Any OpenAI-compatible upstream (vLLM, Ollama, a llama.cpp server, OpenAI).

This is the scale-out path: the same API, metering and charging, with the
model running elsewhere.  The key is read from the environment variable the
model's config names, never from the config file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from tollway.core.config import ModelConfig
from tollway.inference.backends.base import (
    Cancel,
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    upstream_failed,
)
from tollway.inference.backends.http1 import Http1Pool, TransportError

# Without the upstream's tokenizer, reserve for the worst case: a token is at
# least one byte, plus the chat template's overhead per message.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
_TEMPLATE_TOKENS = 16


# Failures of the transport itself (refused, reset, timed out): always worth a retry.
_TRANSPORT_ERRORS = (TransportError, OSError, asyncio.TimeoutError)


class OpenAIUpstream:
    """The HTTP client is :mod:`tollway.inference.backends.http1`: on the
    gateway's hot path a general-purpose client was the largest cost left
    (docs/benchmarks.md). Connections are pooled and kept alive; the pool is
    made on first use, inside the event loop."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.provider = f"openai:{urlsplit(cfg.base_url).hostname}"
        self.base = cfg.base_url.rstrip("/")
        self.headers: dict[str, str] = {"Accept": "application/json, text/event-stream"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if key:
                self.headers["Authorization"] = f"Bearer {key}"
        self._pool: Http1Pool | None = None
        self.model = cfg.upstream_model or cfg.name

    @property
    def http(self) -> Http1Pool:
        if self._pool is None:
            self._pool = Http1Pool(
                self.base, self.headers, connect_timeout=5.0, read_timeout=self.cfg.timeout_seconds
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

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
                    whole = orjson.loads(await r.read())
                    choice = (whole.get("choices") or [{}])[0]
                    message = choice.get("message") or {}
                    text = message.get("content") or ""
                    if text:
                        progress.completion_tokens = 1
                        yield Delta(text)
                    u = whole.get("usage") or {}
                    yield Finish(
                        choice.get("finish_reason") or "stop",
                        int(u.get("prompt_tokens") or self.prompt_tokens(params)),
                        int(u.get("completion_tokens") or (1 if text else 0)),
                        message.get("tool_calls") or None,
                    )
                    return
                async for line in r.lines():
                    if cancel.is_set():
                        reason = "cancelled"
                        break
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = orjson.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            produced_chunks += 1
                            progress.completion_tokens = produced_chunks
                            yield Delta(text)
                        if choice.get("finish_reason"):
                            reason = choice["finish_reason"]
        except _TRANSPORT_ERRORS as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        if usage is not None:
            yield Finish(reason, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:  # an upstream that does not report usage: count what we saw, bound the prompt
            yield Finish(reason, self.prompt_tokens(params), produced_chunks)

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
        body = orjson.loads(raw)
        data = sorted(body["data"], key=lambda d: d["index"])
        tokens = int((body.get("usage") or {}).get("prompt_tokens") or sum(self.token_counts(texts)))
        return [d["embedding"] for d in data], tokens


def _retryable(status: int) -> bool:
    """Server errors, timeouts and rate limits are worth another try; other refusals are not."""
    return status >= 500 or status in (408, 409, 429)
