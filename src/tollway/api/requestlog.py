"""Every AI request past authentication is in the request log, whatever way
it ends: a handler logs its own requests (with tokens, cost, attempts); this
middleware logs what no handler did, when the request ends:

- a request refused after its key was checked but before the gateway saw it
  (a body that fails its model's validation: ``400``);
- a request whose handler raised something unexpected (``500``): the entry the
  gateway opened is written with the status that went out.

The error code is read from the error body (small, one JSON object)."""

from __future__ import annotations

from typing import Any

import orjson

from tollway.gateway.requestlog import OPEN, Entry, RequestLog

_EXACT = {
    "/v1/chat/completions": "chat.completions",
    "/v1/messages": "messages",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
_MAX_ERROR_BODY = 4096


def endpoint(path: str) -> str | None:
    """The request log's name for an AI route, or None for any other path."""
    return _EXACT.get(path) or ("ai.run" if path.startswith("/ai/run/") else None)


class LogEveryRequest:
    """Pure ASGI; only the AI routes pay for it (a context variable and a send wrapper)."""

    def __init__(self, app: Any, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        name = endpoint(scope["path"]) if scope["type"] == "http" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        opened: list[Entry] = []
        token = OPEN.set(opened)
        status = 500
        error = bytearray()

        async def watch(msg: Any) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            elif msg["type"] == "http.response.body" and status >= 400 and len(error) < _MAX_ERROR_BODY:
                error.extend(msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, receive, watch)
        finally:
            OPEN.reset(token)
            self._finish(scope, name, opened, status, bytes(error))

    def _finish(self, scope: Any, name: str, opened: list[Entry], status: int, error: bytes) -> None:
        left = [e for e in opened if not e.recorded]
        if not opened:
            key = scope.get("state", {}).get("api_key")
            if key is None:  # not past authentication
                return
            e = self.log.start(name)
            e.key_id, e.customer_id = key.id, key.customer_id
            left = [e]
        for e in left:
            if status >= 400:
                e.status, e.error_code = status, e.error_code or _code(error)
            self.log.record(e)


def _code(body: bytes) -> str | None:
    try:
        err = orjson.loads(body)["error"]
        code = err.get("code") if isinstance(err, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
