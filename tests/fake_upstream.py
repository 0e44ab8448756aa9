"""A controllable OpenAI-compatible upstream for gateway tests: a real HTTP
server (uvicorn in a thread) that counts calls and can be told to fail.

    with FakeUpstream() as up:
        up.fail_next(2, status=500)     # the next 2 chat calls answer 500
        up.garble_next(1, b"<html>")    # the next call answers 200 with this body
        up.delay_s = 0.2                # every answer waits this long
        up.chunk_delay_s = 0.05         # a stream's chunks come one by one, this far apart
        ... up.url ...  up.calls
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from threaded import ThreadServer, free_port

WORDS = ["Hello", " from", " the", " fake", " upstream", "!"]
PROMPT_TOKENS = 10
FINISH = "length"  # a text answer's finish reason (a test may set "stop")


class FakeUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.calls = 0
        self.streamed: list[bool] = []  # per chat call: did tollway ask for a stream
        self.delay_s = 0.0
        self.last_request: dict[str, Any] = {}  # the last chat request's body
        self.last_headers: dict[str, str] = {}  # the last request's headers (lower-case names)
        self.chunk_delay_s = 0.0  # a stream's chunks are sent one by one, this far apart
        self.prompt_tokens = PROMPT_TOKENS  # what usage reports for the prompt
        self.finish_reason = FINISH  # a text answer's
        self._fail: list[int] = []
        self._garbled: list[bytes] = []
        self._lock = threading.Lock()
        self._server = ThreadServer(self, lifespan="off", port=self.port)

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail += [status] * n

    def garble_next(self, n: int, body: bytes = b"<html>502 Bad Gateway</html>") -> None:
        """The next ``n`` calls answer 200 with ``body`` (not an OpenAI answer)."""
        with self._lock:
            self._garbled += [body] * n

    # ------------------------------------------------------------------ ASGI

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        with self._lock:
            self.calls += 1
            self.last_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            status = self._fail.pop(0) if self._fail else 200
            garbled = self._garbled.pop(0) if self._garbled and status == 200 else None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if status != 200:
            await self._send(send, status, b'{"error":{"message":"injected failure"}}', b"application/json")
            return
        if garbled is not None:
            await self._send(send, 200, garbled, b"application/json")
            return
        req = json.loads(body or b"{}")
        n = min(int(req.get("max_tokens") or len(WORDS)), len(WORDS))
        pt = self.prompt_tokens
        usage = {"prompt_tokens": pt, "completion_tokens": n, "total_tokens": pt + n}
        if scope["path"].endswith("/embeddings"):
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [0.5] * 4} for i in range(len(inputs))]
            out = {"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
            await self._send(send, 200, json.dumps(out).encode(), b"application/json")
            return
        self.streamed.append(bool(req.get("stream")))
        self.last_request = req
        msgs = req.get("messages") or [{}]
        if req.get("tools") and req.get("tool_choice") != "none" and msgs[-1].get("role") != "tool":
            await self._tool_call(send, req, usage)
            return
        if not req.get("stream"):
            msg = {"role": "assistant", "content": "".join(WORDS[:n])}
            whole = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [{"index": 0, "message": msg, "finish_reason": self.finish_reason}],
                "usage": usage,
            }
            await self._send(send, 200, json.dumps(whole).encode(), b"application/json")
            return
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
        chunks = [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS[:n]]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]})
        chunks.append({**base, "choices": [], "usage": usage})
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
        if self.chunk_delay_s:
            ctype = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": ctype})
            for ev in events:
                await send({"type": "http.response.body", "body": ev, "more_body": True})
                await asyncio.sleep(self.chunk_delay_s)
            await send({"type": "http.response.body", "body": b""})
            return
        await self._send(send, 200, b"".join(events), b"text/event-stream")

    TOOL_ARGS = '{"city": "Paris"}'

    async def _tool_call(
        self, send: Callable[[dict[str, Any]], Awaitable[None]], req: dict[str, Any], usage: dict[str, int]
    ) -> None:
        """Tools offered and the turn is not a tool's result: call the named tool (or the first) with
        ``TOOL_ARGS``, as OpenAI answers: whole, or streamed head first, then the arguments in two pieces."""
        choice = req.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else req["tools"][0]["function"]["name"]
        call = {
            "id": "call_fake1",
            "type": "function",
            "function": {"name": name, "arguments": self.TOOL_ARGS},
        }
        if not req.get("stream"):
            msg = {"role": "assistant", "content": None, "tool_calls": [call]}
            whole = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}],
                "usage": usage,
            }
            await self._send(send, 200, json.dumps(whole).encode(), b"application/json")
            return
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
        head = {
            "index": 0,
            "id": "call_fake1",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        half = len(self.TOOL_ARGS) // 2
        deltas = [
            {"role": "assistant", "content": None, "tool_calls": [head]},
            {"tool_calls": [{"index": 0, "function": {"arguments": self.TOOL_ARGS[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": self.TOOL_ARGS[half:]}}]},
        ]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        chunks.append({**base, "choices": [], "usage": usage})
        sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        await self._send(send, 200, sse, b"text/event-stream")

    @staticmethod
    async def _send(
        send: Callable[[dict[str, Any]], Awaitable[None]], status: int, body: bytes, ctype: bytes
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeUpstream:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


def model(name: str, url: str, **over: Any) -> dict[str, Any]:
    """A ``[[models]]`` entry for an upstream at ``url``."""
    return {
        "name": name,
        "task": "chat",
        "backend": "openai",
        "base_url": url,
        "neurons_per_m_input": 2457,
        "neurons_per_m_output": 18252,
        **over,
    }
