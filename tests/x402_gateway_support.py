"""The paywall's test origin and the helpers its tests share: an HTTP origin
that records what reaches it (the raw path, the headers, the body), and the
402 / payment header helpers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from threaded import ThreadServer
from tollway.runtime import Runtime
from x402_helpers import Payer


class Origin:
    """A real HTTP origin that records every request reaching it. ``api/fail``
    answers 500; ``fail_next`` makes the next requests answer 503; ``delay_s``
    holds each answer (so that concurrent requests overlap)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_next = 0
        self.delay_s = 0.0
        app = FastAPI()

        @app.api_route("/{rest:path}", methods=["GET", "POST"])
        async def echo(rest: str, request: Request) -> Any:
            self.calls.append(
                {
                    "path": rest,
                    "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                    "query": request.scope.get("query_string", b"").decode("latin-1"),
                    "headers": dict(request.headers),
                    "body": await request.body(),
                }
            )
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if rest == "api/fail":
                return JSONResponse({"error": "origin down"}, status_code=500)
            if rest.startswith("api/used/"):  # an upto payment: settle what the path names
                used = {"amount": rest.removeprefix("api/used/")}
                return JSONResponse({"used": used}, headers={"Settlement-Overrides": json.dumps(used)})
            if self.fail_next:
                self.fail_next -= 1
                return JSONResponse({"error": "try again"}, status_code=503)
            return {"echo": rest, "query": dict(request.query_params)}

        self.app = app


def required(r: httpx.Response) -> dict[str, Any]:
    """The decoded PAYMENT-REQUIRED header of a 402."""
    out: dict[str, Any] = json.loads(base64.b64decode(r.headers["payment-required"]))
    return out


def header(obj: Any) -> str:
    """A payment header's value: base64 JSON."""
    return base64.b64encode(json.dumps(obj).encode()).decode()


async def funded(rt: Runtime, amount: int = 10_000) -> Payer:
    p = Payer()
    await rt.devnet.fund(p.address, amount)
    return p


async def revenue(rt: Runtime) -> int:
    return (await rt.ledger.get_account("sys_revenue")).balance


def asgi_scope(method: str, target: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An HTTP request's ASGI scope as uvicorn builds it: ``path`` percent-decoded,
    ``raw_path`` as sent."""
    raw_path, _, query = target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"tollway.test")]
        + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("tollway.test", 80),
    }


async def send_raw(
    app: Any, method: str, target: bytes, headers: dict[str, str] | None = None, body: bytes = b""
) -> httpx.Response:
    """One request straight into the ASGI app with the request target exactly as
    written (an HTTP client would resolve ``..`` first), its scope built as
    uvicorn builds it: ``path`` percent-decoded, ``raw_path`` as sent."""
    scope = asgi_scope(method, target, headers)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect
        return {}

    status, out_headers, chunks = 0, [], []

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status, out_headers
        if msg["type"] == "http.response.start":
            status, out_headers = msg["status"], msg.get("headers", [])
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(scope, receive, send)
    return httpx.Response(status, headers=out_headers, content=b"".join(chunks))


@pytest.fixture
def origin() -> Iterator[tuple[Origin, str]]:
    """A recording origin served over HTTP: (the origin, its base URL)."""
    o = Origin()
    with ThreadServer(o.app) as srv:
        yield o, srv.url
