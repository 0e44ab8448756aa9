"""The AI binding (Cloudflare Workers' ``env.AI``, for local deployments):
each worker of a deployment gets a Unix socket, ``/run/tollway/ai.sock`` in
its sandbox (``$TOLLWAY_AI_SOCKET``), that speaks HTTP/1.1 and answers
tollway's OpenAI-compatible routes (``POST /v1/chat/completions``,
``POST /v1/embeddings``, ``GET /v1/models``), charged to the deployment's
wallet. The sandbox has no network: this socket is its one way to a model.

The socket is the credential. It lives in the worker's own directory (made
at spawn, ``root:<worker uid>`` mode 0750, bound at ``/run/tollway``), is made
when the worker is given its deployment and removed when it stops. Each
request it serves is checked (the route, the body size, the deployment's
concurrency), stripped of any credential the app sent, given the
deployment's binding token (:mod:`tollway.provision.ai_tokens`) and called
in-process on tollway's own ASGI app, so streaming answers stream through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollway.core.errors import ErrorType, TollwayError, not_found
from tollway.core.responses import error_response
from tollway.provision.config import ProvisionConfig
from tollway.provision.workers import Worker

if TYPE_CHECKING:
    from uvicorn.server import ServerState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Bearer = Callable[[str], Awaitable[str]]  # deployment id -> the credential its requests carry

SOCKET = "ai.sock"
INSIDE_DIR = "/run/tollway"  # where the worker's run directory is bound in its sandbox
URL = "http://tollway.ai/v1"  # the base URL to use over the socket (any host: the socket is the route)
ROUTES = {"/v1/chat/completions": "POST", "/v1/embeddings": "POST", "/v1/models": "GET"}
# What the app may not send on: credentials (the binding adds its own) and proxy headers.
_DROP = frozenset(
    {b"authorization", b"proxy-authorization", b"x-api-key", b"cookie", b"forwarded", b"x-real-ip"}
)


def _err(status: int, type_: str, code: str, message: str, param: str | None = None) -> TollwayError:
    return TollwayError(type_, code, message, param, status=status)


@dataclass(slots=True)
class _Served:
    server: asyncio.AbstractServer
    state: ServerState
    path: Path


class AIBinding:
    def __init__(self, cfg: ProvisionConfig, bearer: Bearer) -> None:
        self.cfg = cfg
        self.bearer = bearer  # the deployment's binding token (tests may substitute another credential)
        self.target: ASGIApp | None = None  # tollway's ASGI app, set by the API once it is built
        self._served: dict[int, _Served] = {}  # by worker pid
        self.inflight: dict[str, int] = {}  # requests being served, per deployment

    def serve(self, app: ASGIApp) -> None:
        """Forward to ``app`` (tollway's own): without it, workers get no binding."""
        self.target = app

    @property
    def enabled(self) -> bool:
        return self.cfg.ai_binding and self.target is not None

    async def attach(self, deployment_id: str, w: Worker, inside_dir: str) -> dict[str, str]:
        """Make ``w``'s socket (in its run directory, seen by the app at ``inside_dir``)
        for ``deployment_id``; the environment that tells the app where it is."""
        if not self.enabled or w.dir is None:
            return {}
        run = w.dir / "run"
        import uvicorn.config  # on the first binding, not at start-up
        from uvicorn.server import ServerState

        cfg = uvicorn.config.Config(
            _Proxy(self, deployment_id), lifespan="off", log_level="warning", access_log=False,
            server_header=False, date_header=False, proxy_headers=False, timeout_keep_alive=30,
        )  # fmt: skip
        cfg.load()
        state = ServerState()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # Through the directory's descriptor: the host path may be longer than sun_path allows.
            sock.bind(f"/proc/self/fd/{dir_fd}/{SOCKET}")
            os.chmod(SOCKET, 0o660, dir_fd=dir_fd)
            if os.getuid() == 0:
                os.chown(SOCKET, 0, w.uid, dir_fd=dir_fd, follow_symlinks=False)
            sock.listen(64)
            sock.setblocking(False)
            server = await asyncio.get_running_loop().create_unix_server(
                lambda: cfg.http_protocol_class(config=cfg, server_state=state, app_state={}),  # type: ignore[call-arg]
                sock=sock,
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(SOCKET, dir_fd=dir_fd)
            raise
        finally:
            os.close(dir_fd)
        self._served[w.pid] = _Served(server, state, run / SOCKET)
        return {"TOLLWAY_AI_SOCKET": f"{inside_dir}/{SOCKET}", "TOLLWAY_AI_URL": URL}

    def detach(self, w: Worker) -> None:
        """The worker stops: its socket stops serving (open connections too) and is removed."""
        served = self._served.pop(w.pid, None)
        if served is None:
            return
        served.server.close()
        for conn in list(served.state.connections):
            conn.shutdown()
        with contextlib.suppress(OSError):
            served.path.unlink()

    def sockets(self) -> list[Path]:
        return [s.path for s in self._served.values()]


class _Proxy:
    """One deployment's side of the binding: the ASGI app its sockets serve."""

    def __init__(self, binding: AIBinding, deployment_id: str) -> None:
        self.binding, self.deployment_id = binding, deployment_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            body = await self._check(scope, receive)
        except TollwayError as e:
            await error_response(e)(scope, receive, send)
            return
        if body is None:  # the app hung up
            return
        b, dep = self.binding, self.deployment_id
        if b.inflight.get(dep, 0) >= b.cfg.ai_binding_concurrency:
            busy = _err(
                429, ErrorType.RATE_LIMIT, "ai_binding_concurrency",
                f"this deployment already has {b.cfg.ai_binding_concurrency} AI requests in flight"
                " ([provision] ai_binding_concurrency)",
            )  # fmt: skip
            await error_response(busy)(scope, receive, send)
            return
        b.inflight[dep] = b.inflight.get(dep, 0) + 1
        try:
            try:
                bearer = await b.bearer(dep)
            except TollwayError as e:
                await error_response(e)(scope, receive, send)
                return
            await self._forward(scope, receive, send, body, bearer)
        finally:
            b.inflight[dep] -= 1
            if not b.inflight[dep]:
                del b.inflight[dep]

    async def _check(self, scope: Scope, receive: Receive) -> bytes | None:
        """The request's body, read whole (it is small); a TollwayError for a route
        the binding does not serve or a body over the limit."""
        path, method = scope["path"], scope["method"]
        want = ROUTES.get(path)
        if want is None:
            raise not_found(
                "route_not_found",
                f"the AI binding serves {', '.join(f'{m} {p}' for p, m in ROUTES.items())}, not {path!r}",
            )
        if method != want:
            raise _err(405, ErrorType.INVALID_REQUEST, "method_not_allowed", f"{path} takes {want}")
        limit = self.binding.cfg.ai_binding_max_body_bytes
        too_big = _err(
            413, ErrorType.INVALID_REQUEST, "request_too_large",
            f"the request body is over {limit} bytes ([provision] ai_binding_max_body_bytes)",
        )  # fmt: skip
        for k, v in scope["headers"]:
            if k == b"content-length" and (not v.isdigit() or int(v) > limit):
                raise too_big
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body += msg.get("body", b"")
            if len(body) > limit:
                raise too_big
            if not msg.get("more_body", False):
                return bytes(body)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, body: bytes, bearer: str) -> None:
        target = self.binding.target
        assert target is not None
        headers = [
            (k, v) for k, v in scope["headers"] if k not in _DROP and not k.startswith(b"x-forwarded-")
        ]
        headers.append((b"authorization", b"Bearer " + bearer.encode()))
        inner = {
            **scope,
            "headers": headers,
            "raw_path": scope["path"].encode(),
            "root_path": "",
        }
        sent = False

        async def inner_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await target(inner, inner_receive, send)
