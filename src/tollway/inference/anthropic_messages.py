"""Anthropic's Messages API as a face of tollway (for the ``/v1/messages`` route).

Pure translations, no I/O:

- :func:`parse_request`: a Messages request (``system`` as a string or text
  blocks, ``messages`` with ``text``/``tool_use``/``tool_result`` blocks,
  ``tools``, ``tool_choice``, ``max_tokens`` (required), ``stop_sequences``,
  ``stream``, ...) as tollway's chat: OpenAI-format messages in a
  :class:`ChatParams`. Anything else is a 400 ``invalid_request_error`` whose
  message names the field, as Anthropic words it (``max_tokens: Field required``).
- :func:`message_body` and :class:`MessageStream`: tollway's answer as a Messages
  response body, or as Anthropic's exact event sequence (``message_start``,
  ``content_block_start``/``_delta``/``_stop`` with ``text_delta`` and
  ``input_json_delta``, ``message_delta`` with the usage, ``message_stop``).
- :func:`anthropic_error`: any tollway error in Anthropic's error shape.

The upstream direction (tollway calling Anthropic) is :mod:`tollway.inference.anthropic_format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from tollway.core import jsonparse
from tollway.core.errors import ErrorType, TollwayError
from tollway.inference.backends.base import ChatParams, Delta, Finish, ToolCallDelta

# tollway's finish reason as Anthropic's stop_reason.
STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "cancelled": "end_turn",
}

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
# Request fields with nothing to do here, accepted with their neutral values.
_NEUTRAL = {"service_tier": ("auto", "standard_only"), "thinking": ({"type": "disabled"},)}
_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "metadata",
    *_NEUTRAL,
}
_UNSUPPORTED = {"top_k", "container", "mcp_servers", "context_management", "output_format", "output_config"}


def bad(message: str, param: str | None = None) -> TollwayError:
    """A 400 in Anthropic's words: ``invalid_request_error``, the field first in the message."""
    return TollwayError(
        ErrorType.INVALID_REQUEST, "invalid_request", f"{param}: {message}" if param else message, param
    )


@dataclass(slots=True)
class MessagesRequest:
    model: str
    params: ChatParams  # OpenAI-format messages, tools, tool_choice; stream as asked
    user: str | None = None  # metadata.user_id: the end user


# ------------------------------------------------------------------ request


def parse_request(body: Any) -> MessagesRequest:
    """A Messages request body (parsed JSON) as tollway's chat, or a 400 naming the field."""
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    for k in body:
        if k in _UNSUPPORTED:
            raise bad("is not supported by tollway", k)
        if k not in _FIELDS:
            raise bad("Extra inputs are not permitted", k)
    for k, neutral in _NEUTRAL.items():
        if k in body and body[k] not in neutral:
            raise bad(f"only {' or '.join(orjson.dumps(v).decode() for v in neutral)} is supported", k)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("Field required" if model is None else "Input should be a non-empty string", "model")
    max_tokens = _int(body, "max_tokens", required=True, low=1)
    assert max_tokens is not None
    tools = _tools(body.get("tools"))
    names = {t["function"]["name"] for t in tools or ()}
    tool_choice, parallel = _tool_choice(body.get("tool_choice"), names)
    messages = _system(body.get("system")) + _messages(body.get("messages"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("Input should be a valid boolean", "stream")
    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad("Input should be a list of non-empty strings", "stop_sequences")
    params = ChatParams(
        messages=messages,
        max_tokens=max_tokens,
        temperature=_unit(body, "temperature"),
        top_p=_unit(body, "top_p"),
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        stream=stream,
    )
    return MessagesRequest(model, params, _user(body.get("metadata")))


def _int(body: dict[str, Any], k: str, *, required: bool, low: int) -> int | None:
    v = body.get(k)
    if v is None:
        if required:
            raise bad("Field required", k)
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad("Input should be a valid integer", k)
    if v < low:
        raise bad(f"Input should be greater than or equal to {low}", k)
    return v


def _unit(body: dict[str, Any], k: str) -> float | None:
    v = body.get(k)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
        raise bad("Input should be a number between 0 and 1", k)
    return float(v)


def _user(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or set(metadata) - {"user_id"}:
        raise bad("only user_id is supported", "metadata")
    user = metadata.get("user_id")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise bad("Input should be a string of at most 256 characters", "metadata.user_id")
    return user


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    text = system if isinstance(system, str) else _texts(system, "system")
    return [{"role": "system", "content": text}] if text else []


def _texts(blocks: Any, where: str) -> str:
    """Text blocks (``cache_control`` and ``citations`` are accepted and ignored) as one text."""
    if not isinstance(blocks, list):
        raise bad("Input should be a string or a list of text blocks", where)
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise bad("Input should be a text block", f"{where}.{i}")
        out.append(b["text"])
    return "\n\n".join(out)


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise bad("Field required", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad("Input should be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    pending: set[str] = set()  # tool_use ids of the last assistant turn not yet answered
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict) or set(m) - {"role", "content"}:
            raise bad("Input should be an object with role and content", where)
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise bad("Input should be 'user' or 'assistant'", f"{where}.role")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = content
        else:
            raise bad("Input should be a string or a list of content blocks", f"{where}.content")
        if role == "assistant":
            out.append(_assistant(blocks, where, pending))
        else:
            out.extend(_user_turn(blocks, where, pending))
    return out


def _assistant(blocks: list[Any], where: str, pending: set[str]) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    pending.clear()
    for j, b in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_use":
            call_id, name, args = b.get("id"), b.get("name"), b.get("input")
            if not isinstance(call_id, str) or not _TOOL_ID.match(call_id):
                raise bad("String should match pattern '^[a-zA-Z0-9_-]+$'", f"{at}.id")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise bad("String should match pattern '^[a-zA-Z0-9_-]{1,128}$'", f"{at}.name")
            if not isinstance(args, dict):
                raise bad("Input should be a valid dictionary", f"{at}.input")
            pending.add(call_id)
            fn = {"name": name, "arguments": orjson.dumps(args).decode()}
            calls.append({"id": call_id, "type": "function", "function": fn})
        else:
            raise bad(f"unsupported content block {kind!r} in an assistant message", at)
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _user_turn(blocks: list[Any], where: str, pending: set[str]) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``role: "tool"`` messages, then its text."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    for j, b in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_result":
            call_id = b.get("tool_use_id")
            if call_id not in pending:
                raise bad(
                    "unexpected tool_use_id found in tool_result blocks: each tool_result block "
                    "must have a corresponding tool_use block in the previous message",
                    f"{at}.tool_use_id",
                )
            pending.discard(call_id)
            content = b.get("content", "")
            result = content if isinstance(content, str) else _texts(content, f"{at}.content")
            is_error = b.get("is_error", False)
            if not isinstance(is_error, bool):
                raise bad("Input should be a valid boolean", f"{at}.is_error")
            if is_error:  # OpenAI's tool message has no error flag: the result says so
                result = f"Error: {result}" if result else "Error"
            out.append({"role": "tool", "tool_call_id": call_id, "content": result})
        else:
            raise bad(f"unsupported content block {kind!r} in a user message", at)
    if pending:
        raise bad(
            "tool_use ids were found without tool_result blocks immediately after: "
            + ", ".join(sorted(pending)),
            where,
        )
    if text:
        out.append({"role": "user", "content": "\n\n".join(text)})
    return out


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad("Input should be a valid list", "tools")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for j, t in enumerate(tools):
        at = f"tools.{j}"
        if not isinstance(t, dict) or t.get("type", "custom") != "custom":
            raise bad("only custom (client) tools are supported", at)
        if extra := set(t) - {"type", "name", "description", "input_schema", "cache_control"}:
            raise bad("Extra inputs are not permitted", f"{at}.{min(extra)}")
        name, schema = t.get("name"), t.get("input_schema")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise bad("String should match pattern '^[a-zA-Z0-9_-]{1,128}$'", f"{at}.name")
        if name in seen:
            raise bad("Tool names must be unique", f"{at}.name")
        seen.add(name)
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise bad("Input should be a JSON schema with type 'object'", f"{at}.input_schema")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, names: set[str]) -> tuple[str | dict[str, Any] | None, bool]:
    """(OpenAI's tool_choice, parallel_tool_calls)."""
    if choice is None:
        return None, True
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise bad("Input should be an object with type 'auto', 'any', 'tool' or 'none'", "tool_choice")
    if not names:
        raise bad("tool_choice may only be specified while providing tools", "tool_choice")
    single = choice.get("disable_parallel_tool_use", False)
    if not isinstance(single, bool):
        raise bad("Input should be a valid boolean", "tool_choice.disable_parallel_tool_use")
    kind = choice["type"]
    if kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise bad(f"tool {name!r} is not among the tools", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, not single
    return {"auto": "auto", "any": "required", "none": "none"}[kind], not single


# ------------------------------------------------------------------- answers


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    try:
        args = jsonparse.loads(fn["arguments"] or "{}")
    except jsonparse.BadJson:
        args = {}
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}


def message_body(message_id: str, model: str, text: str, finish: Finish) -> dict[str, Any]:
    """A whole answer as a Messages response body."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [_tool_use(c) for c in finish.tool_calls or ()]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASON.get(finish.reason, "end_turn"),
        "stop_sequence": None,
        "usage": usage(finish.prompt_tokens, finish.completion_tokens),
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """tollway's events as Anthropic's server-sent events, in order: :meth:`start`
    (``message_start``), :meth:`event` for each Delta or ToolCallDelta (opening and
    closing content blocks as the kind changes), :meth:`finish` (the tool calls not
    streamed piecewise, ``message_delta`` with the usage, ``message_stop``)."""

    __slots__ = ("_block", "_kind", "_streamed", "message_id", "model", "prompt_tokens")

    def __init__(self, message_id: str, model: str, prompt_tokens: int) -> None:
        self.message_id = message_id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self._block = -1  # the open content block's index
        self._kind: str | None = None  # its type, or None once closed
        self._streamed: set[int] = set()  # tool call indices that came as ToolCallDeltas

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(self.prompt_tokens, 0),
        }
        return sse("message_start", {"type": "message_start", "message": message})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._kind = block["type"]
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + sse("content_block_start", start)

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta}
        )

    def event(self, ev: Delta | ToolCallDelta) -> bytes:
        if isinstance(ev, Delta):
            if not ev.text:
                return b""
            out = b"" if self._kind == "text" else self._open({"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": ev.text})
        out = b""
        if ev.id is not None:  # a new call
            self._streamed.add(ev.index)
            out = self._open({"type": "tool_use", "id": ev.id, "name": ev.name or "", "input": {}})
        if ev.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": ev.arguments})
        return out

    def finish(self, finish: Finish) -> bytes:
        out = b""
        for i, call in enumerate(finish.tool_calls or ()):
            if i not in self._streamed:  # only known whole: one block, its input in one piece
                fn = call["function"]
                out += self.event(ToolCallDelta(i, call["id"], fn["name"], fn["arguments"] or "{}"))
        out += self._close()
        delta = {"stop_reason": STOP_REASON.get(finish.reason, "end_turn"), "stop_sequence": None}
        out += sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": usage(finish.prompt_tokens, finish.completion_tokens),
            },
        )
        return out + sse("message_stop", {"type": "message_stop"})


# -------------------------------------------------------------------- errors

_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(err: TollwayError) -> dict[str, Any]:
    """A tollway error in Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``
    (sent with the error's own status)."""
    kind = _ERROR_TYPE.get(err.status) or ("api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


def error_event(err: TollwayError) -> bytes:
    """An error after a stream has begun: Anthropic's ``error`` event."""
    return sse("error", anthropic_error(err))
