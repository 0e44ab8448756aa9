"""The zygote: a warm process that has uvicorn (and the common web stack)
imported, and forks one worker per deployment version on request, so a
deploy costs a ``fork`` and the app's own import rather than a fresh
interpreter (about 300 ms on a small machine).

Protocol (JSON lines): stdin gets ``{"id", "dir", "kind", "entrypoint",
"memory_mb", "cpu_seconds", "log"}``; stdout answers ``{"id", "pid", "port"}``
or ``{"id", "error"}``. The worker listens on 127.0.0.1 on a port the zygote
bound before forking (no race for it). When stdin closes (tollway exited),
the zygote stops its workers and exits.

Run as ``python -m tollway.provision.zygote``; it imports nothing else of tollway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import mmap
import os
import resource
import signal
import socket
import struct
import sys
import time
from typing import Any

import uvicorn  # warm: imported once here, shared by every fork
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

_PR_SET_PDEATHSIG = 1
_MAX_HEAD = 64 * 1024 + 1024


class _Seen:
    """The app, noting the time of each request in an 8-byte shared file (the
    edge's idle sweep reads it: connections handed over are not seen there)."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 8)
        self.mm = mmap.mmap(fd, 8)
        os.close(fd)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            struct.pack_into("d", self.mm, 0, time.monotonic())
        await self.app(scope, receive, send)


class _Server(uvicorn.server.Server):
    """uvicorn, plus connections handed over by the edge: each SOCK_SEQPACKET
    message on the hand-off socket carries an accepted client socket
    (SCM_RIGHTS) and the bytes the edge already read from it."""

    def __init__(self, config: uvicorn.config.Config, handoff: str, seen: str) -> None:
        super().__init__(config)
        self.handoff, self.seen = handoff, seen
        self._receivers: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.loaded_app = _Seen(self.config.loaded_app, self.seen)
        await super().startup(sockets)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.handoff)
        listener.listen(64)
        listener.setblocking(False)
        self._handoff_task = asyncio.get_running_loop().create_task(self._accept(listener))

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


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(req: dict[str, Any], sock: socket.socket) -> None:
    """In the forked worker: never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _die_with_parent()
        os.setsid()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        _limit(int(req["memory_mb"]), int(req["cpu_seconds"]))
        os.chdir(req["dir"])
        sys.path.insert(0, req["dir"])
        kind = req["kind"]
        app: Any = req["entrypoint"]
        if kind == "static":
            app = StaticFiles(directory=os.path.join(req["dir"], req["entrypoint"]), html=True)
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
        _Server(cfg, req["handoff"], req["seen"]).run(sockets=[sock])  # TCP (uvicorn's fd= means AF_UNIX)
        code = 3  # the server stopped (or the app failed to load / start)
    except BaseException as e:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"worker failed: {type(e).__name__}: {e}\n")
            sys.stderr.flush()
    finally:
        os._exit(code)


def _spawn(req: dict[str, Any]) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        _child(req, sock)
    sock.close()
    return {"id": req["id"], "pid": pid, "port": port}


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # tollway's ^C is tollway's to handle
    _die_with_parent()
    children: list[int] = []
    out = sys.stdout
    print(json.dumps({"ready": True, "pid": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req: Any = {}
        try:
            req = json.loads(line)
            answer = _spawn(req)
            children.append(int(answer["pid"]))
        except Exception as e:
            answer = {"id": req.get("id") if isinstance(req, dict) else None, "error": str(e)}
        print(json.dumps(answer), file=out, flush=True)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
