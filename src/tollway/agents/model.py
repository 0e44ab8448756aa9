"""Asking the agent's model, on the inference charge path (the same holds,
metering and usage events as ``/v1/chat/completions``).

Tool calls: an upstream model is offered the tools with OpenAI function
calling; a local (llama.cpp) model answers in JSON constrained by a grammar
built from a schema (one of ``{"tool": <name>, "arguments": <that tool's
schema>}`` or ``{"tool": "none", "answer": <text>}``), so it can only call a
tool it has, with arguments of the right shape, or answer in text."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tollway.agents.spec import AgentSpec, ToolSpec
from tollway.core.ids import new_id
from tollway.inference import routing
from tollway.inference.backends.base import ChatParams, Delta
from tollway.inference.config import ModelConfig
from tollway.inference.service import Caller, Inference

NO_TOOL = "none"


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
        # A local model of an agent with tools always answers in the JSON
        # grammar, also when no tool is offered (the turn's last call, a
        # summary): it then cannot but answer in text.
        grammar = self.local(cfg) and bool(tools or spec.tools)
        if grammar:
            params.json_schema = tool_schema(tools or [])
            params.messages = _with_tool_prompt(messages, tools or [])
        elif tools:
            params.tools = [t.function() for t in tools]
        t0 = time.perf_counter()
        call = await self.inference.start_chat(caller, cfg, params, max_tokens or spec.max_tokens)
        parts: list[str] = []
        finish = None
        async for ev in call.events(stream=False):
            if isinstance(ev, Delta):
                parts.append(ev.text)
            else:
                finish = ev
        m = call.metered
        assert m is not None and finish is not None
        await call.committed()
        reply = Reply("".join(parts), [], m.input_tokens, m.output_tokens, m.mneurons, m.charged, 0)
        if grammar:
            _parse_local(reply, {t.name for t in tools or []})
        elif finish.tool_calls:
            for i, tc in enumerate(finish.tool_calls):
                fn = tc.get("function") or {}
                raw_args = fn.get("arguments")
                try:
                    args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
                except json.JSONDecodeError:
                    args = raw_args
                reply.calls.append(
                    Asked(str(tc.get("id") or f"call_{i}"), str(fn.get("name") or ""), args, tc)
                )
        reply.model_us = int((time.perf_counter() - t0) * 1_000_000)
        return reply


def tool_schema(tools: list[ToolSpec]) -> dict[str, Any]:
    """One of: a call of a tool, its arguments held to that tool's schema; or an answer."""
    calls = [
        {
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": t.parameters},
            "required": ["tool", "arguments"],
        }
        for t in tools
    ]
    answer = {
        "type": "object",
        "properties": {"tool": {"const": NO_TOOL}, "answer": {"type": "string"}},
        "required": ["tool", "answer"],
    }
    return {"anyOf": [*calls, answer]}


def _with_tool_prompt(messages: list[dict[str, Any]], tools: list[ToolSpec]) -> list[dict[str, Any]]:
    listing = "\n".join(f"- {t.name}: {t.description} arguments: {json.dumps(t.parameters)}" for t in tools)
    answer = f'{{"tool": "{NO_TOOL}", "answer": <your reply>}}'
    note = (
        f"\n\nYou can call one of these tools:\n{listing}\n"
        f'Reply in JSON: {{"tool": <tool name>, "arguments": {{...}}}} to call a tool, or {answer} to answer.'
        if tools
        else f"\n\nReply in JSON: {answer}."
    )
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = out[0]["content"] + note
    else:
        out.insert(0, {"role": "system", "content": note.strip()})
    return out


_PARTIAL_ANSWER = re.compile(r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)')


def _unescape(s: str) -> str:
    try:
        out: str = json.loads(f'"{s}"')
        return out
    except json.JSONDecodeError:
        return s


def _parse_local(reply: Reply, names: set[str]) -> None:
    try:
        obj = json.loads(reply.text)
    except json.JSONDecodeError:  # cut off at max_tokens: keep what there is of the answer
        partial = _PARTIAL_ANSWER.search(reply.text)
        reply.malformed = reply.text
        reply.text = _unescape(partial.group(1)) if partial else ""
        return
    if not isinstance(obj, dict):
        reply.malformed, reply.text = reply.text, ""
        return
    tool = obj.get("tool")
    if tool not in names:  # NO_TOOL (the grammar allows nothing else)
        reply.text = str(obj.get("answer") or "")
        return
    reply.calls.append(Asked(new_id("call"), str(tool), obj.get("arguments")))
    reply.text = ""


def assistant_calls(calls: list[Asked], local: bool) -> dict[str, Any]:
    """The assistant message that made ``calls`` (for the next request)."""
    if local:
        c = calls[0]
        return {
            "role": "assistant",
            "content": json.dumps({"tool": c.name, "arguments": c.arguments}),
        }
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


def tool_result(call: Asked, text: str, local: bool) -> dict[str, Any]:
    if local:
        return {"role": "user", "content": f"Result of tool {call.name}:\n{text}"}
    return {"role": "tool", "tool_call_id": call.id, "content": text}
