"""A minimal, fast mock of an OpenAI-compatible upstream, for bench/gateway.py.

    .venv/bin/python bench/mock_upstream.py --port 9000

Raw ASGI (no framework) under uvicorn, no access log, uvloop and httptools when
installed. Every answer is fixed, so the upstream costs the same for every setup:

- ``POST /v1/chat/completions``: one ``chat.completion`` with ``usage``
  {prompt_tokens: 12, completion_tokens: 8, total_tokens: 20}; with ``"stream": true``,
  SSE ``chat.completion.chunk`` events, a final usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``.
- ``POST /v1/embeddings``: one 8-dimensional vector per input.
- ``GET /v1/models``: the model list.
- ``GET /weather``: a fixed JSON weather report (the origin in bench/x402.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
WORDS = ["Hello", " from", " the", " mock", " upstream", ",", " hi", "!"]  # 8 completion tokens
CREATED = int(time.time())
JSON_HEADERS = [(b"content-type", b"application/json")]
WEATHER = b'{"city":"Lisbon","forecast":"sunny","temperature_c":21}'
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

_cache: dict[tuple[Any, ...], bytes] = {}  # the answers are fixed: encode each shape once


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def completion(model: str) -> bytes:
    key = ("chat", model)
    if key not in _cache:
        _cache[key] = _dumps(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )
    return _cache[key]


def completion_stream(model: str, include_usage: bool) -> bytes:
    key = ("stream", model, include_usage)
    if key not in _cache:
        base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED, "model": model}
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        ]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in WORDS]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:  # OpenAI then sends usage: null on every chunk but a final one
            for c in chunks:
                c["usage"] = None
            chunks.append({**base, "choices": [], "usage": USAGE})
        _cache[key] = b"".join(b"data: " + _dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    return _cache[key]


def embeddings(model: str, texts: list[Any]) -> bytes:
    n = sum(len(str(t).encode()) // 4 + 1 for t in texts)
    data = [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(len(texts))]
    usage = {"prompt_tokens": n, "total_tokens": n}
    return _dumps({"object": "list", "data": data, "model": model, "usage": usage})


def models() -> bytes:
    if ("models",) not in _cache:
        data = [{"id": "mock", "object": "model", "created": CREATED, "owned_by": "mock"}]
        _cache[("models",)] = _dumps({"object": "list", "data": data})
    return _cache[("models",)]


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error(message: str) -> bytes:
    return _dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    method, path = scope["method"], scope["path"].rstrip("/")
    if method == "GET" and path in ("/v1/models", "/models"):
        return await reply(send, 200, models(), JSON_HEADERS)
    if method == "GET" and path in ("/healthz", "/health"):
        return await reply(send, 200, b'{"ok":true}', JSON_HEADERS)
    if method == "GET" and path == "/weather":  # an origin for bench/x402.py
        return await reply(send, 200, WEATHER, JSON_HEADERS)
    if method != "POST" or path not in ("/v1/chat/completions", "/v1/embeddings"):
        return await reply(send, 404, error(f"no route {method} {path}"), JSON_HEADERS)
    try:
        req = json.loads(await read_body(receive) or b"{}")
    except ValueError:
        return await reply(send, 400, error("body is not JSON"), JSON_HEADERS)
    model = str(req.get("model") or "mock")
    if path == "/v1/embeddings":
        texts = req.get("input", "")
        return await reply(
            send, 200, embeddings(model, texts if isinstance(texts, list) else [texts]), JSON_HEADERS
        )
    if req.get("stream"):
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        return await reply(send, 200, completion_stream(model, include), SSE_HEADERS)
    return await reply(send, 200, completion(model), JSON_HEADERS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    a = p.parse_args()
    import uvicorn

    fast = {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="warning", **fast)


if __name__ == "__main__":
    main()
