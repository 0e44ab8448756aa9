"""Anthropic's Messages wire format, spoken to an upstream (``backend = "anthropic"``).

Pure translations, no I/O:

- :func:`to_messages_request`: tollway's chat (OpenAI-format messages, ``tools``,
  ``tool_choice``, ``parallel_tool_calls``, ``stop``, ...) as a Messages request body:
  system messages pulled out into ``system``; assistant ``tool_calls`` as
  ``tool_use`` blocks; ``role: "tool"`` messages as ``tool_result`` blocks, the
  consecutive ones merged into one user message; ``tool_choice`` as
  ``auto``/``any``/``tool``/``none``, ``parallel_tool_calls=False`` as
  ``disable_parallel_tool_use``.
- :func:`read_message` and :class:`StreamReader`: a Messages answer, whole or as
  its server-sent events, as tollway's events (:class:`Delta` text,
  :class:`ToolCallDelta`, and a :class:`Finish` with OpenAI-format ``tool_calls``,
  the finish reason in OpenAI's words and the usage).

An answer that is not the protocol (a missing field, a tool call whose input is
not a JSON object, a stream cut before ``message_stop``) raises
:class:`BadAnswer`: for an upstream, a failed attempt.

The other direction (the ``/v1/messages`` route) is :mod:`tollway.inference.anthropic_messages`.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollway.core import jsonparse
from tollway.core.errors import invalid
from tollway.inference.backends.base import ChatParams, Delta, Finish, ToolCallDelta
from tollway.inference.backends.openai_upstream import _count

API_VERSION = "2023-06-01"  # the anthropic-version header every request carries

# Anthropic's stop_reason in OpenAI's finish_reason words (what tollway's Finish speaks).
FINISH_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Sampling parameters Anthropic does not have: dropped, as an OpenAI upstream that
# does not implement them ignores them. (Anthropic's temperature range is 0..1.)
_MAX_TEMPERATURE = 1.0


class BadAnswer(ValueError):
    """An answer that is not Anthropic's protocol, or an ``error`` event;
    ``retryable`` says whether another attempt may succeed."""

    def __init__(self, why: str, retryable: bool = True) -> None:
        super().__init__(why)
        self.why = why
        self.retryable = retryable


# ------------------------------------------------------------------ request


def to_messages_request(params: ChatParams, model: str) -> dict[str, Any]:
    """The Messages request for a chat call, without ``max_tokens`` and ``stream``
    (the caller adds them: the cap may still change after the prompt is counted).
    A message tollway cannot express in Anthropic's format is a 400 naming it."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []  # {"role", "content": [blocks]}, consecutive roles merged
    for i, m in enumerate(params.messages):
        role = m.get("role")
        if role in ("system", "developer"):
            if text := _text(m.get("content")):
                system.append(text)
            continue
        if role == "tool":
            blocks: list[dict[str, Any]] = [_tool_result(m, i)]
            role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(m, i)
        else:
            text = _text(m.get("content"))
            blocks = [{"type": "text", "text": text}] if text else []
            role = "user"
        if not blocks:
            continue  # Anthropic refuses empty content; an empty turn says nothing
        if turns and turns[-1]["role"] == role:
            prev = turns[-1]["content"]
            if role == "user" and blocks[0]["type"] == "tool_result":
                # tool_result blocks lead their user message: results go before any text
                at = sum(1 for b in prev if b["type"] == "tool_result")
                prev[at:at] = blocks
            else:
                prev.extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise invalid("no_messages", "the chat needs a user or assistant message with content", "messages")
    body: dict[str, Any] = {"model": model, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    if params.stop:
        body["stop_sequences"] = params.stop
    if params.temperature is not None:
        body["temperature"] = min(params.temperature, _MAX_TEMPERATURE)
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.tools:
        body["tools"] = [_tool(t, j) for j, t in enumerate(params.tools)]
        choice = _tool_choice(params.tool_choice)
        if not params.parallel_tool_calls and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        if choice != {"type": "auto"}:
            body["tool_choice"] = choice
    if params.json_schema is not None or params.json_object:
        raise invalid(
            "unsupported_parameter",
            "response_format is not supported by an anthropic upstream; use a forced tool",
            "response_format",
        )
    return body


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def _assistant_blocks(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if text := _text(m.get("content")):
        blocks.append({"type": "text", "text": text})
    for j, call in enumerate(m.get("tool_calls") or ()):
        fn = call.get("function") or {}
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        try:
            args = jsonparse.loads(fn.get("arguments") or "{}")
        except jsonparse.BadJson:
            args = None
        if not isinstance(args, dict):
            raise invalid("invalid_tool_call", "a tool call's arguments must be a JSON object", where)
        if not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
            raise invalid(
                "invalid_tool_call", "a tool call needs an id and a function name", f"messages[{i}]"
            )
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args})
    return blocks


def _tool_result(m: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(
            "missing_tool_call_id", "a tool message needs tool_call_id", f"messages[{i}].tool_call_id"
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if text := _text(m.get("content")):
        block["content"] = text
    return block


def _tool(t: dict[str, Any], j: int) -> dict[str, Any]:
    fn = t.get("function") if t.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid("unsupported_tool", "only function tools are supported", f"tools[{j}]")
    out: dict[str, Any] = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise invalid("invalid_tool_choice", f"tool_choice {choice!r} is not supported", "tool_choice")


# ------------------------------------------------------------------- answers


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One of OpenAI's ``message.tool_calls``."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def prompt_usage(usage: dict[str, Any]) -> int:
    """Every input token Anthropic processed: its ``input_tokens`` leaves out the cached ones."""
    return sum(
        _count(usage.get(k))
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def read_message(answer: Any) -> tuple[str, Finish]:
    """A whole Messages answer: its text, and the Finish (tool calls, reason, usage)."""
    if not isinstance(answer, dict):
        raise BadAnswer("the body is not a JSON object")
    if answer.get("type") == "error":
        raise _error_event(answer)
    content = answer.get("content")
    if answer.get("type") != "message" or not isinstance(content, list):
        raise BadAnswer("the body is not a message with a content list")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadAnswer(f"content[{k}].text is not a string")
            text.append(block["text"])
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input")
            if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name):
                raise BadAnswer(f"content[{k}] is a tool_use without an id and a name")
            if not isinstance(args, dict):
                raise BadAnswer(f"content[{k}].input is not a JSON object")
            calls.append(tool_call(call_id, name, orjson.dumps(args).decode()))
        elif kind is None:
            raise BadAnswer(f"content[{k}] is not a content block")
        # other blocks (thinking, server tools' results) carry nothing a chat answer has
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        raise BadAnswer("the message has no usage")
    whole = "".join(text)
    finish = Finish(
        _finish_reason(answer.get("stop_reason"), calls),
        prompt_usage(usage),
        _count(usage.get("output_tokens")),
        calls or None,
    )
    return whole, finish


class StreamReader:
    """Anthropic's stream events, one parsed ``data:`` object at a time, as tollway's
    events: :meth:`feed` returns what each event adds; :meth:`finish` the Finish
    once ``message_stop`` has arrived."""

    __slots__ = ("_args", "_blocks", "_calls", "_stop_reason", "done", "output_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # content block index -> tool call index
        self._calls: list[list[str]] = []  # per tool call: id, name
        self._args: list[list[str]] = []  # per tool call: the argument fragments
        self._stop_reason: Any = None
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.done = False

    def feed(self, event: Any) -> list[Delta | ToolCallDelta]:
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "content_block_delta":
            delta = event.get("delta")
            dkind = delta.get("type") if isinstance(delta, dict) else None
            if dkind == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise BadAnswer("a text_delta's text is not a string")
                return [Delta(text)] if text else []
            if dkind == "input_json_delta":
                piece = delta.get("partial_json")
                call = self._blocks.get(event.get("index"))
                if not isinstance(piece, str) or call is None:
                    raise BadAnswer("an input_json_delta outside a tool_use block")
                self._args[call].append(piece)
                return [ToolCallDelta(call, arguments=piece)] if piece else []
            if dkind is None:
                raise BadAnswer("a content_block_delta without a delta")
            return []  # thinking, signature, citations: nothing a chat answer has
        if kind == "content_block_start":
            block = event.get("content_block")
            index = event.get("index")
            if not isinstance(block, dict) or not isinstance(index, int):
                raise BadAnswer("a content_block_start without an index and a block")
            if block.get("type") != "tool_use":
                return []
            call_id, name = block.get("id"), block.get("name")
            if not (isinstance(call_id, str) and call_id and isinstance(name, str) and name):
                raise BadAnswer("a tool_use block without an id and a name")
            n = self._blocks[index] = len(self._calls)
            self._calls.append([call_id, name])
            self._args.append([])
            return [ToolCallDelta(n, call_id, name)]
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if not isinstance(usage, dict):
                raise BadAnswer("message_start without a message and its usage")
            self.prompt_tokens = prompt_usage(usage)
            self.output_tokens = _count(usage.get("output_tokens"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            usage = event.get("usage")
            if isinstance(usage, dict):  # cumulative counts
                self.output_tokens = _count(usage.get("output_tokens")) or self.output_tokens
                self.prompt_tokens = prompt_usage(usage) or self.prompt_tokens
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise _error_event(event)
        elif not isinstance(kind, str):
            raise BadAnswer("an event without a type")
        # content_block_stop, ping, and event types Anthropic may add: nothing to report
        return []

    def tool_calls(self) -> list[dict[str, Any]]:
        """The calls streamed so far, whole; each one's input must be a JSON object."""
        calls = []
        for (call_id, name), pieces in zip(self._calls, self._args, strict=True):
            arguments = "".join(pieces) or "{}"
            try:
                args = jsonparse.loads(arguments)
            except jsonparse.BadJson:
                args = None
            if not isinstance(args, dict):
                raise BadAnswer(f"tool call {name!r}'s input is not a JSON object")
            calls.append(tool_call(call_id, name, arguments))
        return calls

    def finish(self) -> Finish:
        if not self.done:
            raise BadAnswer("the stream ended before message_stop")
        calls = self.tool_calls()
        return Finish(
            _finish_reason(self._stop_reason, calls), self.prompt_tokens, self.output_tokens, calls or None
        )


def _finish_reason(stop_reason: Any, calls: list[dict[str, Any]]) -> str:
    if stop_reason is None:
        return "tool_calls" if calls else "stop"
    return FINISH_REASON.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _error_event(event: dict[str, Any]) -> BadAnswer:
    err = event.get("error")
    err = err if isinstance(err, dict) else {}
    kind = str(err.get("type") or "error")
    return BadAnswer(
        f"{kind}: {str(err.get('message') or '')[:300]}",
        retryable=kind in ("overloaded_error", "api_error", "rate_limit_error", "timeout_error"),
    )
