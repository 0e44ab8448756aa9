"""A small paid API for tollway deployments: ``GET /answer?q=...`` answers with
a model, through the AI binding (tollway's AI routes over the Unix socket at
``$TOLLWAY_AI_SOCKET``, charged to the deployment's wallet). Only the standard
library: deploy this file as a bundle with ``"entrypoint": "app:app"``.

Environment it reads (declare it with the deployment): ``AI_MODEL`` (default
``smollm2-135m-instruct``, tollway's embedded model), ``AI_MAX_TOKENS`` (64).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket: the binding's (the sandbox has no network)."""

    def __init__(self, socket_path: str, timeout: float = 120.0) -> None:
        super().__init__("tollway.ai", timeout=timeout)  # the Host header; the socket is the route
        self.socket_path = socket_path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.socket_path)
        self.sock = s


def ask(question: str) -> tuple[int, dict[str, Any]]:
    """One chat completion through the binding: its status and JSON body."""
    body = {
        "model": os.environ.get("AI_MODEL", "smollm2-135m-instruct"),
        "messages": [{"role": "user", "content": question}],
        "max_tokens": int(os.environ.get("AI_MAX_TOKENS", "64")),
    }
    conn = UnixHTTPConnection(os.environ.get("TOLLWAY_AI_SOCKET", "/run/tollway/ai.sock"))
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
        r = conn.getresponse()
        out: dict[str, Any] = json.loads(r.read() or b"{}")
        return r.status, out
    finally:
        conn.close()


async def _json(send: Send, status: int, obj: object) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
    if scope["path"] != "/answer":
        await _json(send, 200, {"ok": True, "try": "/answer?q=What+is+a+toll+road%3F"})
        return
    q = parse_qs(scope["query_string"].decode()).get("q", [""])[0].strip()
    if not q:
        bad = {"type": "invalid_request_error", "code": "missing_q", "message": "ask with ?q=", "param": "q"}
        await _json(send, 400, {"error": bad})
        return
    try:
        status, out = await asyncio.to_thread(ask, q)  # http.client blocks: off the event loop
    except OSError as e:
        err: dict[str, Any] = {"type": "api_error", "code": "ai_unavailable", "param": None}
        err["message"] = str(e)
        await _json(send, 502, {"error": err})
        return
    if status != 200:  # the binding's error, in the one error shape: passed on
        await _json(send, status, out)
        return
    answer = {
        "question": q,
        "answer": out["choices"][0]["message"]["content"],
        "model": out["model"],
        "usage": out["usage"],
    }
    await _json(send, 200, answer)
