"""A warm worker: started ahead of need (in its sandbox, see
:mod:`tollway.provision.sandbox`) with uvicorn and the common web stack
imported, it waits for one deployment to serve, so a deploy costs the app's
own import rather than a fresh interpreter (about 300 ms on a small machine).

Arguments: ``--listen FD`` (a TCP socket tollway bound on its loopback),
``--handoff FD`` (a listening SOCK_SEQPACKET Unix socket: the edge hands
accepted connections over it), ``--seen FD`` (8 bytes of shared memory: the
time of the last request) and ``--dir`` (the bundle). stdin then gets one JSON
line, ``{"kind", "entrypoint", "env", "request_seconds"}``; the process serves that
app until it is killed, or exits if stdin closes first (tollway exited).
Each request gets ``request_seconds`` of wall time, then a 504.

Run as ``python -I warm.py``: it imports nothing of tollway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

import uvicorn  # warm: imported before the deployment is known
import uvicorn.config
import uvicorn.server
from starlette.staticfiles import StaticFiles

with contextlib.suppress(ImportError):  # what uvicorn[standard] runs on: warm them too
    import httptools  # noqa: F401
    import uvicorn.loops.uvloop
    import uvicorn.protocols.http.httptools_impl
    import uvloop  # noqa: F401
with contextlib.suppress(ImportError):
    import uvicorn.middleware.wsgi


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    """An app for :func:`_preload`."""


def _preload() -> None:
    """What uvicorn imports only when it loads an app (websockets, lifespan, logging): now, while warm."""
    with contextlib.suppress(Exception):
        uvicorn.config.Config(_noop, log_level="warning", access_log=False).load()


_preload()

_MAX_HEAD = 64 * 1024 + 1024
_TIMEOUT = json.dumps({
    "error": {"type": "api_error", "code": "request_timeout", "param": None,
              "message": "the deployment did not answer within its wall-time limit"},
}).encode()  # fmt: skip


class _Guard:
    """The app, noting the time of each request in 8 bytes of shared memory
    (the edge's idle sweep reads it: connections handed over are not seen
    there), and answering 504 when a request outlives its wall-time limit."""

    def __init__(self, app: Any, seen_fd: int, seconds: float) -> None:
        self.app, self.seconds = app, seconds
        self.mm = mmap.mmap(seen_fd, 8)
        os.close(seen_fd)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        struct.pack_into("d", self.mm, 0, time.monotonic())
        task = asyncio.current_task()
        assert task is not None
        started = fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        async def guarded_send(msg: Any) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        timer = asyncio.get_running_loop().call_later(self.seconds, expire)
        try:
            await self.app(scope, receive, guarded_send)
        except asyncio.CancelledError:
            if not fired or started:
                raise
            task.uncancel()
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_TIMEOUT)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _TIMEOUT})
        finally:
            timer.cancel()


class _Server(uvicorn.server.Server):
    """uvicorn, plus connections handed over by the edge: each SOCK_SEQPACKET
    message on the hand-off socket carries an accepted client socket
    (SCM_RIGHTS) and the bytes the edge already read from it."""

    def __init__(self, config: uvicorn.config.Config, handoff: socket.socket, guard: Any) -> None:
        super().__init__(config)
        self.handoff, self.guard = handoff, guard
        self._receivers: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.loaded_app = self.guard(self.config.loaded_app)
        await super().startup(sockets)
        self.handoff.setblocking(False)
        self._handoff_task = asyncio.get_running_loop().create_task(self._accept(self.handoff))

    def _protocol(self) -> asyncio.Protocol:
        cfg = self.config
        proto: asyncio.Protocol = cfg.http_protocol_class(  # type: ignore[call-arg]
            config=cfg, server_state=self.server_state, app_state=self.lifespan.state
        )
        return proto

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            task = loop.create_task(self._receive(conn))
            self._receivers.add(task)
            task.add_done_callback(self._receivers.discard)

    async def _receive(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with conn:
            while True:
                try:
                    head, fds, _, _ = socket.recv_fds(conn, _MAX_HEAD, 1)
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_reader(conn.fileno(), ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(conn.fileno())
                    continue
                if not head and not fds:
                    return
                for fd in fds:
                    client = socket.socket(fileno=fd)
                    client.setblocking(False)
                    _, proto = await loop.connect_accepted_socket(self._protocol, client)
                    proto.data_received(head)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--handoff", type=int, required=True)
    ap.add_argument("--seen", type=int, required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # tollway's ^C is tollway's to handle
    line = sys.stdin.readline()  # waits, warm, until tollway has a deployment for this worker
    if not line.strip():
        return
    req = json.loads(line)
    os.environ.update(req.get("env") or {})  # what the deployment declares, before its code runs
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(a.dir)
    sys.path.insert(0, a.dir)
    kind = req["kind"]
    app: Any = req["entrypoint"]
    if kind == "static":
        app = StaticFiles(directory=os.path.join(a.dir, req["entrypoint"]), html=True)
    cfg = uvicorn.config.Config(
        app,
        interface="wsgi" if kind == "wsgi" else "auto",
        lifespan="auto" if kind == "asgi" else "off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=75,
    )
    listen = socket.socket(fileno=a.listen)  # TCP (uvicorn's fd= means AF_UNIX)
    handoff = socket.socket(fileno=a.handoff)
    seconds = float(req["request_seconds"])
    _Server(cfg, handoff, lambda inner: _Guard(inner, a.seen, seconds)).run(sockets=[listen])
    sys.exit(3)  # the server stopped (or the app failed to load / start)


if __name__ == "__main__":
    main()
