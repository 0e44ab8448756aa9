"""Any OpenAI-compatible upstream (vLLM, Ollama, a llama.cpp server, OpenAI).

This is the scale-out path: the same API, metering and charging, with the
model running elsewhere.  The key is read from the environment variable the
model's config names, never from the config file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tollway.core.config import ModelConfig
from tollway.inference.backends.base import (
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    upstream_failed,
)

# Without the upstream's tokenizer, reserve for the worst case: a token is at
# least one byte, plus the chat template's overhead per message.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
_TEMPLATE_TOKENS = 16


class OpenAIUpstream:
    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.provider = f"openai:{httpx.URL(cfg.base_url).host}"
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=cfg.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_seconds, connect=5.0),
        )
        self.model = cfg.upstream_model or cfg.name

    async def aclose(self) -> None:
        await self.client.aclose()

    def prompt_tokens(self, params: ChatParams) -> int:
        messages = params.messages
        size = sum(len(m["content"].encode()) for m in messages)
        return size + _TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + _TEMPLATE_TOKENS

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(t.encode()) + 2 for t in texts]

    def _body(self, params: ChatParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": params.messages,
            "max_tokens": params.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
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
        return body

    async def stream(
        self, params: ChatParams, cancel: threading.Event, progress: Progress
    ) -> AsyncIterator[ChatEvent]:
        progress.prompt_tokens = self.prompt_tokens(params)
        produced_chunks = 0
        usage: dict[str, int] | None = None
        reason = "stop"
        try:
            async with self.client.stream("POST", "/chat/completions", json=self._body(params)) as r:
                if r.status_code != 200:
                    detail = (await r.aread()).decode(errors="replace")[:300]
                    raise upstream_failed(
                        self.provider, f"HTTP {r.status_code}: {detail}", retryable=_retryable(r.status_code)
                    )
                async for line in r.aiter_lines():
                    if cancel.is_set():
                        reason = "cancelled"
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
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
        except httpx.HTTPError as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        if usage is not None:
            yield Finish(reason, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:  # an upstream that does not report usage: count what we saw, bound the prompt
            yield Finish(reason, self.prompt_tokens(params), produced_chunks)

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int]:
        try:
            r = await self.client.post("/embeddings", json={"model": self.model, "input": texts})
        except httpx.HTTPError as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise upstream_failed(
                self.provider, f"HTTP {r.status_code}: {r.text[:300]}", retryable=_retryable(r.status_code)
            )
        body = r.json()
        data = sorted(body["data"], key=lambda d: d["index"])
        tokens = int((body.get("usage") or {}).get("prompt_tokens") or sum(self.token_counts(texts)))
        return [d["embedding"] for d in data], tokens


def _retryable(status: int) -> bool:
    """Server errors, timeouts and rate limits are worth another try; other refusals are not."""
    return status >= 500 or status in (408, 409, 429)
