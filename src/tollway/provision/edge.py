"""The edge: tollway's listener for deployments. It reads only the head of
a connection's first request to find its Host, picks the deployment (waking
its worker if it was scaled to zero), connects to the worker on loopback,
and from then on splices bytes both ways at the protocol level, with flow
control, until either side closes. Clients keep one origin per connection
(HTTP/1.1 clients pool connections by host), so the first Host names the
deployment for the whole connection.

A host an agent has priced (``Edge.front``: the paywall in front of
deployments, set by the runtime) is served at the HTTP level instead: the
connection is handed to uvicorn's HTTP protocol running that ASGI app, which
verifies each request's payment, forwards it to the worker and settles it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from tollway.provision.workers import Worker

log = logging.getLogger("tollway.provision")

MAX_HEAD = 64 * 1024
HANDOFF_MAX = 60 * 1024  # bytes already read that may travel with a handed-over connection
Route = Callable[[str], Awaitable[str | None]]  # host -> deployment id
GetWorker = Callable[[str, bool], Awaitable[Worker]]  # deployment id, fresh -> its running worker
Touch = Callable[[str], None]
Blocked = Callable[[str, str], str | None]  # deployment id, host -> why it is not served (a code), or None


class Front(Protocol):
    """An ASGI app for the hosts it takes (``tollway.x402.front.Front``)."""

    def paid(self, host: str) -> bool: ...

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


def _error(status: int, reason: str, text: str) -> bytes:
    kind = "payment_error" if status == 402 else "not_found_error" if status == 404 else "api_error"
    err = {"type": kind, "code": reason, "message": text, "param": None}
    body = json.dumps({"error": err}).encode()
    return (
        f"HTTP/1.1 {status} {reason.replace('_', ' ')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def host_of(head: bytes) -> str | None:
    low = head.lower()
    i = low.find(b"\r\nhost:")
    if i < 0:
        return None
    j = low.find(b"\r\n", i + 7)
    value = low[i + 7 : j if j >= 0 else len(low)].strip().decode("latin-1")
    if value.startswith("["):  # [v6]:port
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if ":" in value else value


def _nodelay(transport: asyncio.BaseTransport) -> None:
    """No Nagle: a proxied request or answer goes out at once, not after the peer's delayed ACK."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        t = self.client.transport
        if t is not None:
            t.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        t = self.client.transport
        if t is not None and not t.is_closing():
            t.close()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()


class _Client(asyncio.Protocol):
    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.buf = bytearray()
        self.dep: str | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self.up is not None:
            self.up.write(data)
            self.edge.touch(self.dep or "")
            return
        self.buf += data
        if self.task is not None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._fail(431, "request_header_too_large", "the request head is too large")
            return
        host = host_of(bytes(self.buf[: end + 2]))
        if not host:
            self._fail(400, "missing_host", "the request has no Host header")
            return
        front = self.edge.front
        if front is not None and front.paid(host):
            self._serve_http(front)
            return
        self.task = asyncio.get_running_loop().create_task(self._connect(host))

    async def _connect(self, host: str) -> None:
        try:
            dep = await self.edge.route(host)
            if dep is None:
                self._fail(404, "deployment_not_found", f"no deployment answers for {host}")
                return
            why = self.edge.blocked(dep, host) if self.edge.blocked is not None else None
            if why is not None:
                self._fail(
                    402, why, f"{host} is suspended: its recurring charges are unpaid (top up the wallet)"
                )
                return
            self.dep = dep
            if self.edge.count is not None:
                self.edge.count(dep)
            loop = asyncio.get_running_loop()
            for fresh in (False, True):  # a worker that died meanwhile is started again, once
                w = await self.edge.worker(dep, fresh)
                if self.edge.handoff and self._hand_over(w):
                    self.edge.touch(dep)
                    return
                try:
                    t, _ = await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", w.port)
                    break
                except OSError:
                    if fresh:
                        raise
            if self.transport is None or self.transport.is_closing():
                t.close()
                return
            self.up = t
            t.write(bytes(self.buf))
            self.buf.clear()
            self.edge.touch(dep)
        except Exception as e:
            log.warning("edge: %s: %s", host, e)
            self._fail(502, "deployment_unavailable", "the deployment did not answer")

    def _serve_http(self, front: Front) -> None:
        """From now on the connection is HTTP served by ``front`` (uvicorn's parser)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        proto = self.edge.http_protocol(front)
        t.set_protocol(proto)
        proto.connection_made(t)
        proto.data_received(bytes(self.buf))
        self.buf.clear()

    def _hand_over(self, w: Worker) -> bool:
        """Give the connection itself to the worker (SCM_RIGHTS), with what was
        read of it: from then on the worker serves it directly."""
        t = self.transport
        sock = None if t is None or t.is_closing() else t.get_extra_info("socket")
        if sock is None or len(self.buf) > HANDOFF_MAX:
            return False
        try:
            fd = os.dup(sock.fileno())
        except OSError:
            return False
        try:
            if not w.hand(bytes(self.buf), fd):
                return False
        finally:
            os.close(fd)
        assert t is not None
        t.pause_reading()
        t.close()  # our descriptor only (no shutdown): the worker holds its own
        return True

    def _fail(self, status: int, code: str, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_error(status, code, text))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.up is not None and not self.up.is_closing():
            self.up.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()


class Edge:
    def __init__(
        self,
        route: Route,
        worker: GetWorker,
        touch: Touch,
        *,
        handoff: bool = True,
        blocked: Blocked | None = None,
        count: Touch | None = None,
    ) -> None:
        self.route, self.worker, self.touch, self.handoff = route, worker, touch, handoff
        self.blocked, self.count = blocked, count
        self.server: asyncio.Server | None = None
        self.front: Front | None = None  # the paywall for priced hosts (set by the runtime)
        self._http: tuple[Any, Any] | None = None  # uvicorn's config and server state, made once

    def http_protocol(self, front: Front) -> asyncio.Protocol:
        """A uvicorn HTTP/1.1 protocol serving ``front`` (keep-alive, pipelining, flow control)."""
        from uvicorn.config import Config
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        from uvicorn.server import ServerState

        if self._http is None or self._http[0].app is not front:
            config = Config(
                front, lifespan="off", ws="none", proxy_headers=False, access_log=False, log_config=None
            )
            config.load()
            self._http = (config, ServerState())
        config, state = self._http
        return cast(asyncio.Protocol, HttpToolsProtocol(config, state, {}, asyncio.get_running_loop()))

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _Client(self), host, port, backlog=2048, reuse_address=True
        )
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
