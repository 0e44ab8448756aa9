"""Every request's identity, outermost (pure ASGI):

- a request id: the incoming ``x-request-id`` if it is sane (1-128 of
  ``A-Za-z0-9._:-``), else a new one; returned as ``x-request-id``, and on
  every log line written while the request is served;
- with tracing on, the server span: a child of the incoming ``traceparent``
  (W3C), current while the request is served, returned as ``traceparent``;
  the trace id is returned as ``x-trace-id`` (with tracing off, the incoming
  traceparent's, so logs and the request log still correlate);
- the Prometheus series per route template (``tollway_http_requests_total``,
  ``tollway_http_request_seconds``): the route an inner layer matched, else
  ``unmatched``; a request counted once, in the outermost pass;
- the access log line (``[telemetry] access_log``).

One layer does all of it: it reads the status once and times the request once.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tollway.core import ids, inflight
from tollway.observe import context, metrics, tracing
from tollway.observe.config import TelemetryConfig
from tollway.observe.logs import ACCESS, log_format

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_SEEN = "tollway_request_id"  # in the scope: an inner pass (x402 "self" origin) adds nothing


def configure(cfg: TelemetryConfig) -> bool:
    """Tracing on if configured (``[telemetry]``, ``OTEL_*``); whether to write the access log."""
    tracing.configure(cfg)
    metrics.CUSTOMER_LABEL = cfg.metrics_customer_label
    return cfg.access_log == "on" or (cfg.access_log == "auto" and log_format(cfg.log_format) == "json")


class TelemetryMiddleware:
    def __init__(self, app: Any, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labelled children, once each

    def _count(self, scope: Any, status: int, t0: float) -> None:
        """The request in the per-route series."""
        key = (scope["method"], getattr(scope.get("route"), "path", "unmatched"), status)
        series = self._series.get(key)
        if series is None:
            method, path, code = key
            series = self._series[key] = (
                metrics.HTTP_REQUESTS.labels(method, path, str(code)),
                metrics.HTTP_SECONDS.labels(method, path),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - t0)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _SEEN in scope:
            await self.app(scope, receive, send)
            return
        inflight.enter()
        try:
            await self._serve(scope, receive, send)
        finally:
            inflight.leave()

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        rid: str | None = None
        incoming: bytes | None = None
        for k, v in scope["headers"]:
            if k == b"x-request-id" and _SANE_ID.match(v):
                rid = v.decode("ascii")
            elif k == b"traceparent":
                incoming = v
        if rid is None:
            rid = "req_" + ids.random_hex(96)  # as token_hex(12) wrote it; not a secret
        scope[_SEEN] = rid
        rid_token = context.REQUEST_ID.set(rid)
        t0 = time.perf_counter()
        status = [500]
        if tracing.ENABLED:
            try:
                await self._traced(scope, receive, send, rid, status, t0)
            finally:
                context.REQUEST_ID.reset(rid_token)
            return
        extra = [(b"x-request-id", rid.encode())]
        tid_token = None
        if incoming is not None and (tid := tracing.incoming_trace_id(incoming)) is not None:
            tid_token = context.TRACE_ID.set(tid)  # tracing is off: logs still correlate
            extra.append((b"x-trace-id", tid.encode()))

        try:
            await self.app(scope, receive, _sender(send, status, extra))
        finally:
            self._count(scope, status[0], t0)
            if self.access_log:
                _access(scope, status[0], t0)
            if tid_token is not None:
                context.TRACE_ID.reset(tid_token)
            context.REQUEST_ID.reset(rid_token)

    async def _traced(
        self, scope: Any, receive: Any, send: Any, rid: str, status: list[int], t0: float
    ) -> None:
        method = scope["method"]
        s = tracing.start(
            method,
            kind="server",
            parent=tracing.extract(scope["headers"]),
            attributes={"http.request.method": method, "url.path": scope["path"], "tollway.request_id": rid},
        )
        assert s is not None
        ctx = s.get_span_context()
        tid = f"{ctx.trace_id:032x}".encode()
        extra = [
            (b"x-request-id", rid.encode()),
            (b"traceparent", b"00-%s-%016x-%02x" % (tid, ctx.span_id, ctx.trace_flags)),
            (b"x-trace-id", tid),
        ]

        try:
            with tracing.use(s):
                try:
                    await self.app(scope, receive, _sender(send, status, extra))
                finally:
                    if self.access_log:  # inside the span: the line carries its ids
                        _access(scope, status[0], t0)
        except BaseException as e:
            tracing.fail(s, e)
            raise
        finally:
            self._count(scope, status[0], t0)
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                s.set_attributes({"http.route": route, "http.response.status_code": status[0]})
                s.update_name(f"{method} {route}")
            else:
                s.set_attribute("http.response.status_code", status[0])
            if status[0] >= 500:
                from opentelemetry.trace import Status, StatusCode

                s.set_status(Status(StatusCode.ERROR))
            s.end()


def _sender(send: Any, status: list[int], extra: list[tuple[bytes, bytes]]) -> Any:
    """``send``, noting the status and adding ``extra`` headers to the response's start."""

    async def _send(msg: Any) -> None:
        if msg["type"] == "http.response.start":
            status[0] = msg["status"]
            msg["headers"] = [*msg.get("headers", ()), *extra]
        await send(msg)

    return _send


def _access(scope: Any, status: int, t0: float) -> None:
    route = getattr(scope.get("route"), "path", None)
    client = scope.get("client")
    ACCESS.info(
        "%s %s %d",
        scope["method"],
        scope["path"],
        status,
        extra={
            "http_method": scope["method"],
            "path": scope["path"],
            "route": route,
            "status": status,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
            "client": client[0] if client else None,
        },
    )
