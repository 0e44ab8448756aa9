"""Anthropic as an upstream (``backend = "anthropic"``), in its own wire format.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``,
streamed or whole as the caller reads it, tools passed through (the
translations are :mod:`tollway.inference.anthropic_format`), metered on
Anthropic's ``usage``. Like :mod:`.openai_upstream`: the same lean HTTP client,
and every failure an :class:`UpstreamError` the router retries or falls back
on: the transport, 429, 5xx and 529 (overloaded) are worth another attempt, a
malformed answer or tool call too; other 4xx are not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from tollway.core import jsonparse
from tollway.inference.anthropic_format import (
    API_VERSION,
    BadAnswer,
    StreamReader,
    read_message,
    to_messages_request,
)
from tollway.inference.backends.base import (
    Cancel,
    ChatEvent,
    ChatParams,
    Delta,
    Finish,
    Progress,
    upstream_failed,
)
from tollway.inference.backends.openai_upstream import (
    _TEMPLATE_TOKENS,
    _TEMPLATE_TOKENS_PER_MESSAGE,
    _TRANSPORT_ERRORS,
    _malformed,
    _retryable,
)
from tollway.inference.backends.pooled import PooledUpstream
from tollway.inference.config import ModelConfig

# Anthropic adds a system prompt of its own when tools are offered (about 350
# tokens); the bound on the prompt reserves for it.
_TOOLS_SYSTEM_TOKENS = 400


class AnthropicUpstream(PooledUpstream):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(
            cfg,
            "anthropic",
            {"Accept": "application/json, text/event-stream", "anthropic-version": API_VERSION},
            lambda k: {"x-api-key": k},
        )

    def prompt_tokens(self, params: ChatParams) -> int:
        """A safe upper bound (a token is at least one byte of the request), from
        the translated request, which is kept for the call: a history Anthropic's
        format cannot express is refused here, before any money moves."""
        body = params.prepared
        if not isinstance(body, dict):
            body = params.prepared = to_messages_request(params, self.model)
        size = len(orjson.dumps(body))
        tools = _TOOLS_SYSTEM_TOKENS if params.tools else 0
        return size + _TEMPLATE_TOKENS_PER_MESSAGE * len(body["messages"]) + _TEMPLATE_TOKENS + tools

    def _body(self, params: ChatParams) -> bytes:
        body = params.prepared
        if not isinstance(body, dict):
            body = params.prepared = to_messages_request(params, self.model)
        return orjson.dumps({**body, "max_tokens": params.max_tokens, "stream": params.stream})

    async def stream(
        self, params: ChatParams, cancel: Cancel, progress: Progress
    ) -> AsyncIterator[ChatEvent]:
        progress.prompt_tokens = bound = self.prompt_tokens(params)
        try:
            r = await self.http.request("POST", "/v1/messages", self._body(params))
            async with r:
                if r.status != 200:
                    detail = (await r.read()).decode(errors="replace")[:300]
                    raise upstream_failed(
                        self.provider, f"HTTP {r.status}: {detail}", retryable=_retryable(r.status)
                    )
                if not params.stream:  # one answer, read whole
                    text, finish = read_message(_loads(await r.read()))
                    if text:
                        progress.completion_tokens = 1
                        yield Delta(text)
                    finish.prompt_tokens = finish.prompt_tokens or bound
                    finish.completion_tokens = finish.completion_tokens or (1 if text else 0)
                    yield finish
                    return
                reader = StreamReader()
                pieces = 0
                async for line in r.lines():
                    if cancel.is_set():
                        break
                    if not line.startswith(b"data:"):
                        continue  # the event: lines name what data.type says again
                    for ev in reader.feed(_loads(line[5:])):
                        pieces += 1
                        progress.completion_tokens = pieces
                        # Tool calls arrive whole in the Finish; their pieces are
                        # yielded once ToolCallDelta joins ChatEvent.
                        if isinstance(ev, Delta):
                            yield ev
                    if reader.done:
                        break
        except _TRANSPORT_ERRORS as e:
            raise upstream_failed(self.provider, f"{type(e).__name__}: {e}") from e
        except BadAnswer as e:
            raise upstream_failed(self.provider, f"HTTP 200 but {e.why}", retryable=e.retryable) from None
        if cancel.is_set() and not reader.done:
            yield Finish("cancelled", reader.prompt_tokens or bound, max(reader.output_tokens, pieces))
            return
        try:
            finish = reader.finish()
        except BadAnswer as e:
            raise _malformed(self.provider, e.why) from None
        finish.prompt_tokens = finish.prompt_tokens or bound
        finish.completion_tokens = finish.completion_tokens or pieces
        yield finish


def _loads(raw: bytes) -> Any:
    try:
        return jsonparse.loads(raw)
    except jsonparse.BadJson as e:
        raise BadAnswer(f"the body is {e.message}: {raw[:100]!r}") from None
