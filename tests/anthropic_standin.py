"""A strict local stand-in for Anthropic's Messages API: a real HTTP server
(uvicorn in a thread) that checks every request as Anthropic does and answers
deterministically, whole or streamed.

Checked: ``POST /v1/messages``; the stand-in's key (``x-api-key``, or
``Authorization: Bearer`` as the SDK sends it since 2.x) and
an ``anthropic-version`` (tollway sends ``2023-06-01``); a JSON object with ``model``,
``max_tokens`` and a non-empty ``messages`` and no unknown fields; roles that
alternate starting with ``user``; content blocks of the right shape for their
role (``text`` non-empty, ``tool_use`` with an id, name and object input,
``tool_result`` first in its message and answering a ``tool_use`` of the
assistant message just before, every such ``tool_use`` answered); ``system``;
``tools`` (names, ``input_schema`` of type object, unique); ``tool_choice``
naming an offered tool; ``stop_sequences``; ``temperature`` and ``top_p`` in
0..1. Anything else is a 400 in Anthropic's error shape.

Answers: a ``tool_use`` when tools are offered (and ``tool_choice`` is not
``none``) and the last user text names a tool, or ``tool_choice`` is ``any`` or
``tool``; its input fills the schema's required properties. After a tool
result, text quoting it. Otherwise :data:`WORDS`, cut at ``max_tokens`` words
or a stop sequence.

    with AnthropicStandin() as api:
        api.fail_next(2, status=529)       # the next 2 calls answer 529 overloaded_error
        api.garble_next(1, b"<html>")      # the next call answers 200 with this body
        ... api.url ...  api.calls  api.requests (headers, body)
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from threaded import ThreadServer, free_port

KEY = "sk-ant-standin"
VERSION = "2023-06-01"
WORDS = ["Hello", " from", " the", " Anthropic", " stand-in", "!"]
_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "service_tier",
    "thinking",
}
_VERSION = re.compile(r"^20[0-9]{2}-[01][0-9]-[0-3][0-9]$")
_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_STATUS_TYPE = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
_STATUS_TYPE |= {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


class Invalid(Exception):
    """What Anthropic would answer 400 ``invalid_request_error`` with."""


def check_request(body: Any) -> None:
    """Raise :class:`Invalid` for a request body Anthropic refuses."""
    if not isinstance(body, dict):
        raise Invalid("body: Input should be an object")
    for k in body:
        if k not in _FIELDS:
            raise Invalid(f"{k}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise Invalid("max_tokens: Field required (an integer >= 1)")
    for k in ("temperature", "top_p"):
        v = body.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1):
            raise Invalid(f"{k}: Input should be between 0 and 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    stops = body.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise Invalid("stop_sequences: Input should be a list of non-empty strings")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _text_blocks(system, "system")
    names = _check_tools(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is not None:
        if not names:
            raise Invalid("tool_choice: may only be specified while providing tools")
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: Input tag does not match any of the expected tags")
        if choice["type"] == "tool" and choice.get("name") not in names:
            raise Invalid("tool_choice.name: not among the tools")
        extra = set(choice) - {"type", "name", "disable_parallel_tool_use"}
        if extra or not isinstance(choice.get("disable_parallel_tool_use", False), bool):
            raise Invalid("tool_choice: Extra inputs are not permitted")
    _check_messages(body.get("messages"))


def _text_blocks(blocks: Any, where: str) -> None:
    if not isinstance(blocks, list):
        raise Invalid(f"{where}: Input should be a valid list")
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text":
            raise Invalid(f"{where}.{i}: Input should be a text block")
        _text_block(b, f"{where}.{i}")


def _text_block(b: dict[str, Any], where: str) -> None:
    if set(b) - {"type", "text", "cache_control", "citations"}:
        raise Invalid(f"{where}: Extra inputs are not permitted")
    if not isinstance(b.get("text"), str) or not b["text"]:
        raise Invalid(f"{where}: text content blocks must be non-empty")


def _check_tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for j, t in enumerate(tools):
        if not isinstance(t, dict) or set(t) - {
            "type",
            "name",
            "description",
            "input_schema",
            "cache_control",
        }:
            raise Invalid(f"tools.{j}: Extra inputs are not permitted")
        if not isinstance(t.get("name"), str) or not _NAME.match(t["name"]) or t["name"] in names:
            raise Invalid(f"tools.{j}.name: a unique name matching {_NAME.pattern}")
        schema = t.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{j}.input_schema: Input should be a JSON schema of type object")
        if "description" in t and not isinstance(t["description"], str):
            raise Invalid(f"tools.{j}.description: Input should be a valid string")
        names.add(t["name"])
    return names


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: Field required (a non-empty list)")
    asked: set[str] = set()  # tool_use ids of the assistant message just before
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise Invalid(f"{where}: an object with exactly role and content")
        role, content = m["role"], m["content"]
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise Invalid(
                f"{where}.role: roles must alternate between user and assistant, starting with user"
            )
        if isinstance(content, str):
            if not content:
                raise Invalid(f"{where}.content: must be non-empty")
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list) and content:
            blocks = content
        else:
            raise Invalid(f"{where}.content: a non-empty string or list of blocks")
        used: set[str] = set()
        answered: set[str] = set()
        results_done = False
        for j, b in enumerate(blocks):
            at = f"{where}.content.{j}"
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text":
                _text_block(b, at)
                results_done = True
            elif kind == "tool_use" and role == "assistant":
                if set(b) - {"type", "id", "name", "input", "cache_control"}:
                    raise Invalid(f"{at}: Extra inputs are not permitted")
                if not isinstance(b.get("id"), str) or not _ID.match(b["id"]) or b["id"] in used:
                    raise Invalid(f"{at}.id: a unique id matching {_ID.pattern}")
                if not isinstance(b.get("name"), str) or not _NAME.match(b["name"]):
                    raise Invalid(f"{at}.name: String should match pattern {_NAME.pattern}")
                if not isinstance(b.get("input"), dict):
                    raise Invalid(f"{at}.input: Input should be a valid dictionary")
                used.add(b["id"])
            elif kind == "tool_result" and role == "user":
                if results_done:
                    raise Invalid(f"{at}: tool_result blocks must come first in the user message")
                if set(b) - {"type", "tool_use_id", "content", "is_error", "cache_control"}:
                    raise Invalid(f"{at}: Extra inputs are not permitted")
                if b.get("tool_use_id") not in asked:
                    raise Invalid(
                        f"{at}.tool_use_id: unexpected tool_use_id found in tool_result blocks: "
                        f"{b.get('tool_use_id')!r}. Each tool_result block must have a corresponding "
                        "tool_use block in the previous message."
                    )
                c = b.get("content", "")
                if not isinstance(c, str):
                    _text_blocks(c, f"{at}.content")
                if not isinstance(b.get("is_error", False), bool):
                    raise Invalid(f"{at}.is_error: Input should be a valid boolean")
                answered.add(b["tool_use_id"])
            else:
                raise Invalid(f"{at}: unexpected block type {kind!r} in a {role} message")
        if role == "user" and asked - answered:
            raise Invalid(
                f"{where}: tool_use ids were found without tool_result blocks immediately after: "
                + ", ".join(sorted(asked - answered))
            )
        asked = used


def _example(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _example(props.get(k) or {}) for k in schema.get("required") or []}
    return {"string": "Paris", "integer": 42, "number": 1.5, "boolean": True, "array": []}.get(str(kind))


def _last_text(messages: list[dict[str, Any]]) -> str:
    c = messages[-1]["content"]
    if isinstance(c, str):
        return c
    return " ".join(b["text"] for b in c if b.get("type") == "text")


def answer(req: dict[str, Any], n: int) -> dict[str, Any]:
    """The stand-in's deterministic answer to a valid request (the ``n``-th call)."""
    messages = req["messages"]
    tools = req.get("tools") or []
    choice = req.get("tool_choice") or {"type": "auto"}
    last = messages[-1]
    results = (
        [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        if last["role"] == "user" and isinstance(last["content"], list)
        else []
    )
    text = _last_text(messages)
    usage = {"input_tokens": len(json.dumps(req)) // 4, "output_tokens": 0}
    msg: dict[str, Any] = {
        "id": f"msg_standin{n}",
        "type": "message",
        "role": "assistant",
        "model": req["model"],
        "content": [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    pick = None
    if tools and choice["type"] != "none" and not results:
        if choice["type"] == "tool":
            pick = next(t for t in tools if t["name"] == choice["name"])
        else:
            pick = next((t for t in tools if t["name"] in text), None)
            if pick is None and choice["type"] == "any":
                pick = tools[0]
    if pick is not None:
        tool_input = _example(pick["input_schema"])
        msg["content"] = [
            {"type": "tool_use", "id": f"toolu_standin{n}", "name": pick["name"], "input": tool_input}
        ]
        msg["stop_reason"] = "tool_use"
        usage["output_tokens"] = 10
        return msg
    if results:
        said = [r.get("content") if isinstance(r.get("content"), str) else "" for r in results]
        words = ["The", " tool", " said:", " " + "; ".join(said)]
    else:
        words = list(WORDS)
    out = "".join(words[: req["max_tokens"]])
    if req["max_tokens"] < len(words):
        msg["stop_reason"] = "max_tokens"
    for s in req.get("stop_sequences") or []:
        if s in out:
            out = out[: out.index(s)]
            msg["stop_reason"], msg["stop_sequence"] = "stop_sequence", s
            break
    msg["content"] = [{"type": "text", "text": out}] if out else []
    usage["output_tokens"] = min(req["max_tokens"], len(words))
    return msg


def events(msg: dict[str, Any]) -> bytes:
    """``msg`` as Anthropic streams it."""
    start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": msg["usage"]["input_tokens"], "output_tokens": 1}
    out = [("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            first = {"type": "text", "text": ""}
            text = block["text"]
            pieces = [{"type": "text_delta", "text": text[k : k + 5]} for k in range(0, len(text), 5)]
        else:
            first = {**block, "input": {}}
            whole = json.dumps(block["input"])
            half = len(whole) // 2
            pieces = [
                {"type": "input_json_delta", "partial_json": p} for p in ("", whole[:half], whole[half:])
            ]
        out.append(
            ("content_block_start", {"type": "content_block_start", "index": i, "content_block": first})
        )
        out += [
            ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in pieces
        ]
        out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    delta = {"stop_reason": msg["stop_reason"], "stop_sequence": msg["stop_sequence"]}
    usage = {"output_tokens": msg["usage"]["output_tokens"]}
    out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in out)


def error_body(status: int, message: str) -> bytes:
    kind = _STATUS_TYPE.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class AnthropicStandin:
    def __init__(self, key: str = KEY) -> None:
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls = 0
        self.requests: list[tuple[dict[str, str], Any]] = []  # (headers, body) of every call
        self.refused: list[str] = []  # the messages of the 400s it answered
        self._fail: list[int] = []
        self._garbled: list[bytes] = []
        self._lock = threading.Lock()
        self._server = ThreadServer(self, lifespan="off", port=self.port)

    def fail_next(self, n: int, status: int = 529) -> None:
        with self._lock:
            self._fail += [status] * n

    def garble_next(self, n: int, body: bytes = b"<html>502 Bad Gateway</html>") -> None:
        """The next ``n`` calls answer 200 with ``body`` (whole or as the stream)."""
        with self._lock:
            self._garbled += [body] * n

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            m = await receive()
            raw += m.get("body", b"")
            if not m.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.calls += 1
            n = self.calls
            self.requests.append((headers, body))
            status = self._fail.pop(0) if self._fail else 200
            garbled = self._garbled.pop(0) if self._garbled and status == 200 else None
        if (scope["method"], scope["path"]) != ("POST", "/v1/messages"):
            return await _send(send, 404, error_body(404, f"{scope['method']} {scope['path']} not found"))
        # The key as x-api-key, or as a bearer token (what the SDK sends since 2.x).
        if self.key not in (
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        ):
            return await _send(send, 401, error_body(401, "invalid x-api-key"))
        if not _VERSION.match(headers.get("anthropic-version", "")):  # the SDK 2.x sends 2026-10-21
            return await self._refuse(send, "anthropic-version: header is required (e.g. 2023-06-01)")
        if not headers.get("content-type", "").startswith("application/json"):
            return await self._refuse(send, "content-type: must be application/json")
        try:
            check_request(body)
        except Invalid as e:
            return await self._refuse(send, str(e))
        if status != 200:
            return await _send(send, status, error_body(status, "injected failure"))
        if garbled is not None:
            ctype = b"text/event-stream" if body.get("stream") else b"application/json"
            return await _send(send, 200, garbled, ctype)
        msg = answer(body, n)
        if body.get("stream"):
            return await _send(send, 200, events(msg), b"text/event-stream")
        await _send(send, 200, json.dumps(msg).encode())

    async def _refuse(self, send: Callable[[dict[str, Any]], Awaitable[None]], message: str) -> None:
        self.refused.append(message)
        await _send(send, 400, error_body(400, message))

    def __enter__(self) -> AnthropicStandin:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


async def _send(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    body: bytes,
    ctype: bytes = b"application/json",
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
    await send({"type": "http.response.body", "body": body})


def model(name: str, url: str, **over: Any) -> dict[str, Any]:
    """A ``[[models]]`` entry for the stand-in at ``url``."""
    return {
        "name": name,
        "task": "chat",
        "backend": "anthropic",
        "base_url": url,
        "api_key_env": "TOLLWAY_TEST_ANTHROPIC_KEY",
        "upstream_model": "claude-standin",
        "neurons_per_m_input": 2457,
        "neurons_per_m_output": 18252,
        **over,
    }
