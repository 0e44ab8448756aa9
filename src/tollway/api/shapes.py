"""What the AI routes' shapes share: orjson bodies, SSE framing, the usage and
``x_tollway`` blocks, and the chat parameters a request asks for."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel

from tollway.inference.backends.base import ChatParams
from tollway.inference.call import Metered
from tollway.inference.schemas import ChatRequest, Message, RunRequest
from tollway.inference.tool_calls import check

# A finish reason, as OpenAI names it.
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "tool_calls": "tool_calls"}
DONE = b"data: [DONE]\n\n"


class JSONResponse(Response):
    """JSON rendered with orjson: the AI routes' bodies are on the hot path."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage(m: Metered) -> dict[str, Any]:
    return {
        "prompt_tokens": m.input_tokens,
        "completion_tokens": m.output_tokens,
        "total_tokens": m.input_tokens + m.output_tokens,
    }


def tollway(m: Metered) -> dict[str, Any]:
    return {"neurons": m.mneurons / 1000, "charged": m.charged, "ttft_ms": m.ttft_ms}


def chat_params(messages: list[Message], body: ChatRequest | RunRequest) -> ChatParams:
    """The model call a chat request asks for (``max_tokens`` is set per deployment)."""
    p = ChatParams(
        messages=[m.chat() for m in messages],
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
        if body.tools is not None or body.tool_choice is not None:
            tools = [t.model_dump(mode="json", exclude_none=True) for t in body.tools or []]
            choice = body.tool_choice
            p.tool_choice = choice.model_dump(mode="json") if isinstance(choice, BaseModel) else choice
            check(tools, p.tool_choice)  # 400 naming the parameter, before any money moves
            p.tools = tools or None
            if body.parallel_tool_calls is not None:
                p.parallel_tool_calls = body.parallel_tool_calls
    return p
