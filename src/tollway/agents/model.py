"""Asking the agent's model, on the inference charge path (the same holds,
metering and usage events as ``/v1/chat/completions``).

Tool calls: the model is offered the tools with OpenAI function calling, local
(llama.cpp) and upstream models alike; a local model answers in the grammar
:mod:`tollway.inference.tool_calls` builds from them (the one mechanism the
chat API uses too), so it can only call a tool it has, with arguments of the
right shape, or answer in text."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tollway.agents.spec import AgentSpec, ToolSpec
from tollway.core.errors import TollwayError
from tollway.inference import routing
from tollway.inference.backends.base import ChatParams, Delta
from tollway.inference.config import ModelConfig
from tollway.inference.service import Caller, Inference


@dataclass(slots=True)
class Asked:
    """A tool call the model asked for: its name and raw arguments (checked later)."""

    id: str
    name: str
    arguments: Any  # parsed JSON, or the raw string when it did not parse
    raw: dict[str, Any] = field(default_factory=dict)  # OpenAI's tool_call, for the next message


@dataclass(slots=True)
class Reply:
    text: str
    calls: list[Asked]
    input_tokens: int
    output_tokens: int
    mneurons: int
    charged: int
    model_us: int  # time spent in the model call (generation and its charge)
    malformed: str | None = None  # a local model's output that did not parse


class Model:
    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def config(self, spec: AgentSpec) -> ModelConfig:
        return self.inference.model(spec.model, "chat")

    def local(self, cfg: ModelConfig) -> bool:
        return all(t.backend == "llama_cpp" for t in routing.order(cfg, self.inference.configs))

    async def counter(self, cfg: ModelConfig) -> Callable[[list[dict[str, Any]]], int]:
        """How many prompt tokens a message list makes, by the model's own count."""
        target = routing.order(cfg, self.inference.configs)[0]
        backend = await self.inference.backend(target)

        def count(messages: list[dict[str, Any]]) -> int:
            n: int = backend.prompt_tokens(ChatParams(messages=messages, max_tokens=0))
            return n

        return count

    async def ask(
        self,
        caller: Caller,
        spec: AgentSpec,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
    ) -> Reply:
        cfg = self.config(spec)
        params = ChatParams(messages=messages, max_tokens=0, temperature=spec.temperature, stream=False)
        if tools:
            params.tools = [t.function() for t in tools]
            params.tool_choice = "auto"
            params.parallel_tool_calls = not self.local(cfg)  # a small local model: one call a step
        t0 = time.perf_counter()
        parts: list[str] = []
        finish = None
        try:  # a local model's answer is whole before its first event: a call cut short stops start_chat
            call = await self.inference.start_chat(caller, cfg, params, max_tokens or spec.max_tokens)
            async for ev in call.events(stream=False):
                if isinstance(ev, Delta):
                    parts.append(ev.text)
                else:
                    finish = ev
        except TollwayError as e:
            if e.code != "tool_call_truncated":
                raise
            us = int((time.perf_counter() - t0) * 1_000_000)  # nothing charged: a call that did not parse
            return Reply("", [], 0, 0, 0, 0, us, malformed=e.message)
        m = call.metered
        assert m is not None and finish is not None
        await call.committed()
        reply = Reply("".join(parts), [], m.input_tokens, m.output_tokens, m.mneurons, m.charged, 0)
        for i, tc in enumerate(finish.tool_calls or []):
            fn = tc.get("function") or {}
            raw_args = fn.get("arguments")
            try:
                args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
            except json.JSONDecodeError:
                args = raw_args
            reply.calls.append(Asked(str(tc.get("id") or f"call_{i}"), str(fn.get("name") or ""), args, tc))
        reply.model_us = int((time.perf_counter() - t0) * 1_000_000)
        return reply


def assistant_calls(calls: list[Asked]) -> dict[str, Any]:
    """The assistant message that made ``calls`` (for the next request)."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            c.raw
            or {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in calls
        ],
    }


def tool_result(call: Asked, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": text}
