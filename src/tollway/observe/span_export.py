"""Where finished spans go: an SDK span processor in this process, or the
official OTLP exporter in a child process.

``tollway serve`` exports through :class:`ChildSink`: records (tuples of
primitives, see ``spans.Record``) are batched as the SDK's
``BatchSpanProcessor`` batches them (``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_MAX_QUEUE_SIZE``; a full queue
drops, counted and logged) and written with ``marshal`` to a child,
``python -m tollway.observe.span_export``, which turns them into
protobuf (``otlp_encode``: ~4x cheaper than the official encoder) and sends
them through ``OTLPSpanExporter``'s own HTTP client (configured by the same
``OTEL_EXPORTER_OTLP_*`` variables, inherited: endpoint, headers, compression,
TLS, retries). Encoding spans is Python work: in the server's process it
would be taken from the event loop under the GIL, in the child it runs on
another core. The child exits when its input closes (the server stopped, or
was killed). ``sdk_encoder=True`` (and an exporter without the client) sends
``ReadableSpan``s through the exporter's ``export`` instead.

:class:`ProcessorSink` hands each span to an SDK ``SpanProcessor`` as it ends:
the tests' ``SimpleSpanProcessor`` over an ``InMemorySpanExporter``.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from tollway.observe.spans import Record, readable

log = logging.getLogger("tollway.observe")

_FRAME = struct.Struct(">I")
_FLUSHED = b"f"


def resource(service_name: str | None) -> Any:
    """The resource spans carry: ``service.name`` (unless ``OTEL_SERVICE_NAME``
    is set), ``service.version``, and ``OTEL_RESOURCE_ATTRIBUTES`` merged in."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    from tollway import __version__

    attrs: dict[str, Any] = {"service.version": __version__}
    if service_name and not os.environ.get("OTEL_SERVICE_NAME"):
        attrs[SERVICE_NAME] = service_name
    return Resource.create(attrs)


def scope() -> Any:
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from tollway import __version__

    return InstrumentationScope("tollway", __version__)


class ProcessorSink:
    """Each span to an SDK span processor as it ends, in this process."""

    def __init__(self, processor: Any, resource: Any) -> None:
        self.processor = processor
        self.resource = resource
        self.scope = scope()

    def __call__(self, rec: Record) -> None:
        self.processor.on_end(readable(rec, self.resource, self.scope))

    def force_flush(self) -> None:
        self.processor.force_flush()

    def shutdown(self) -> None:
        self.processor.shutdown()


def _env_int(name: str, default: int) -> int:
    try:
        v = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return v if v > 0 else default


class ChildSink:
    """Spans batched here and exported by the official OTLP exporter in a child process."""

    def __init__(self, endpoint: str | None, service_name: str | None, sdk_encoder: bool = False) -> None:
        self.delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.batch = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self.max_queue = max(_env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048), self.batch)
        self.dropped = 0
        self._queue: deque[Record] = deque()
        self._wake = threading.Event()
        self._io = threading.Lock()  # one writer to the child at a time
        self._closing = False
        self._dead = False
        conf = json.dumps({"endpoint": endpoint, "service_name": service_name, "sdk_encoder": sdk_encoder})
        self._child = subprocess.Popen(
            [sys.executable, "-m", "tollway.observe.span_export", conf],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._thread = threading.Thread(target=self._run, name="tollway-spans", daemon=True)
        self._thread.start()

    def __call__(self, rec: Record) -> None:
        q = self._queue
        if len(q) >= self.max_queue:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("span queue full (%d): %d spans dropped so far", self.max_queue, self.dropped)
            return
        q.append(rec)
        if len(q) == self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self._send_queued()

    def _send_queued(self) -> None:
        with self._io:
            q = self._queue
            while q:
                n = min(len(q), self.batch)
                self._write(("s", [q.popleft() for _ in range(n)]))

    def _write(self, msg: tuple[str, Any]) -> None:
        if self._dead:
            return
        try:
            data = marshal.dumps(msg)
        except ValueError:  # an attribute value marshal can't carry: as the SDK would keep it, as text
            data = marshal.dumps((msg[0], [_plain(r) for r in msg[1]]))
        stdin = self._child.stdin
        assert stdin is not None
        try:
            stdin.write(_FRAME.pack(len(data)) + data)
            stdin.flush()
        except (OSError, ValueError) as e:  # a broken pipe; a closed file
            self._dead = True
            log.error("the span exporter process is gone (%s): spans are dropped from now on", e)

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Everything ended so far exported (or refused by the collector)."""
        self._send_queued()
        with self._io:
            self._write(("f", None))
            out = self._child.stdout
            if self._dead or out is None:
                return False
            ready, _, _ = select.select([out], [], [], timeout_s)
            return bool(ready) and out.read(1) == _FLUSHED

    def shutdown(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._send_queued()
        if self._child.stdin is not None:
            try:
                self._child.stdin.close()
            except OSError:
                pass
        try:
            self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
        if self._child.stdout is not None:
            self._child.stdout.close()


def _plain(rec: Sequence[Any]) -> tuple[Any, ...]:
    """A record whose values marshal can carry (others as their ``str``)."""

    def ok(v: Any) -> Any:
        if isinstance(v, bool | int | float | str | bytes) or v is None:
            return v
        if isinstance(v, list | tuple):
            return tuple(ok(x) for x in v)
        return str(v)

    attrs = {str(k): ok(v) for k, v in rec[9].items()}
    events = [(n, t, {str(k): ok(v) for k, v in a.items()}) for n, t, a in rec[12]]
    return (*rec[:9], attrs, rec[10], rec[11], events)


def _raw_sender(exporter: Any) -> Callable[[bytes], object] | None:
    """The official exporter's HTTP client (its endpoint, headers, compression,
    TLS, retries and backoff), given a request already encoded; None if this
    version of the exporter has none (then spans go through ``export``)."""
    client = getattr(exporter, "_client", None)
    send = getattr(client, "export", None)
    return send if callable(send) else None


def _child_main(conf_json: str) -> None:
    """The exporter process: frames from stdin, exported; a flush answered on stdout."""
    from opentelemetry.exporter.otlp.proto.common._internal import (
        _encode_instrumentation_scope,
        _encode_resource,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from tollway.observe import otlp_encode

    conf = json.loads(conf_json)
    res, sc = resource(conf.get("service_name")), scope()
    exporter = OTLPSpanExporter(endpoint=conf.get("endpoint"))  # None: the OTEL_* variables
    send = None if conf.get("sdk_encoder") else _raw_sender(exporter)
    res_pb = _encode_resource(res).SerializeToString()
    scope_pb = _encode_instrumentation_scope(sc).SerializeToString()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            head = inp.read(_FRAME.size)
            if len(head) < _FRAME.size:
                break  # the server is gone
            (n,) = _FRAME.unpack(head)
            kind, body = marshal.loads(inp.read(n))
            if kind == "s" and send is not None:
                send(otlp_encode.request(body, res_pb, scope_pb))
            elif kind == "s":
                exporter.export([readable(r, res, sc) for r in body])
            elif kind == "f":
                out.write(_FLUSHED)
                out.flush()
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    _child_main(sys.argv[1])
