"""tollway's spans: the OpenTelemetry API's ``Span``, recorded without the SDK's cost.

The SDK's span costs ~32 µs to start and end on this project's machines
(attribute validation under a lock, the sampler's result objects, a
``ReadableSpan`` per end) and ~50 µs more to encode for OTLP; a chat request
makes three or four. Here a span is a plain object that fills a record (a
tuple of primitives) and hands it to a sink when it ends: ~6 µs
(``bench/spans.py``). The sinks
(``span_export``) turn records into the SDK's ``ReadableSpan`` and give them to
the SDK's span processors and the official OTLP exporter, in a child process
for ``tollway serve`` (see ``docs/benchmarks.md``, "Telemetry").

What it keeps from the SDK's semantics: the configured sampler decides each
trace at its root (and for a remote parent); a local child follows its parent
(as ``ParentBased`` does, and as every built-in sampler does within a trace);
a span that is not sampled is the API's ``NonRecordingSpan``, so the context
still propagates. Attributes are checked where the SDK would, at the sink.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.util import types

# A finished span, as the sinks receive it (and as it crosses to the exporter process):
# (name, kind, trace_id, span_id, parent_span_id or 0, parent is remote, trace_state
#  header, start ns, end ns, attributes, status code, status description, events)
# events: [(name, time ns, attributes)]
Record = tuple[str, int, int, int, int, bool, str, int, int, dict[str, Any], int, "str | None", list[Any]]
Sink = Callable[[Record], None]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_EMPTY_STATE = TraceState()
_KINDS = {k.name.lower(): k for k in SpanKind}
_KIND_VALUES = {k.name.lower(): k.value for k in SpanKind}


def _new_id(bits: int) -> int:
    while True:  # the SDK's RandomIdGenerator: never the invalid all-zero id
        v = random.getrandbits(bits)
        if v:
            return v


class Span(trace_api.Span):
    """A recording span. Not thread-safe (a span belongs to one task), like the work it times."""

    __slots__ = (
        "_attrs",
        "_ctx",
        "_desc",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_remote",
        "_sink",
        "_span_id",
        "_start",
        "_state",
        "_status",
        "_trace_id",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: int,
        trace_id: int,
        parent_id: int,
        remote: bool,
        state: TraceState,
        attributes: Mapping[str, Any] | None,
        sink: Sink,
    ) -> None:
        self._name = name
        self._kind = kind  # SpanKind's value
        self._trace_id = trace_id
        self._span_id = _new_id(64)
        self._parent = parent_id
        self._remote = remote
        self._state = state
        self._start = time.time_ns()
        self._attrs: dict[str, Any] = dict(attributes) if attributes else {}
        self._status = StatusCode.UNSET.value
        self._desc: str | None = None
        self._events: list[Any] = []
        self._ctx: SpanContext | None = None
        self._sink: Sink | None = sink  # None once ended

    # ------------------------------------------------------------ the API
    def get_span_context(self) -> SpanContext:
        if self._ctx is None:
            self._ctx = SpanContext(self._trace_id, self._span_id, False, _SAMPLED, self._state)
        return self._ctx

    def is_recording(self) -> bool:
        return self._sink is not None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._sink is not None:
            self._attrs[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._sink is not None:
            self._attrs.update(attributes)

    def update_name(self, name: str) -> None:
        if self._sink is not None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._sink is None or self._status == StatusCode.OK.value:  # OK is final (the spec)
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        self._status = code.value
        self._desc = description if code is StatusCode.ERROR else None

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._sink is not None:
            self._events.append((name, timestamp or time.time_ns(), dict(attributes or {})))

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        import traceback

        a: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        a.update(attributes or {})
        self.add_event("exception", a, timestamp)

    def end(self, end_time: int | None = None) -> None:
        sink = self._sink
        if sink is None:
            return
        self._sink = None
        state = self._state
        sink(
            (
                self._name, self._kind, self._trace_id, self._span_id, self._parent, self._remote,
                "" if state is _EMPTY_STATE or not state else state.to_header(), self._start,
                end_time or time.time_ns(), self._attrs, self._status, self._desc, self._events,
            )
        )  # fmt: skip


class Recorder:
    """Starts spans: the sampler's decision at a trace's root, records to ``sink``."""

    def __init__(self, sampler: Any, sink: Sink) -> None:
        self.sampler = sampler
        self.sink = sink
        self._root = root_decision(sampler)

    def start(
        self,
        name: str,
        kind: str = "internal",
        parent: Context | None = None,
        attributes: Mapping[str, Any] | None = None,
        root: bool = False,
    ) -> trace_api.Span:
        """A span, child of ``parent`` (a context; the current one if None) unless ``root``."""
        kv = _KIND_VALUES[kind]
        p = None if root else trace_api.get_current_span(parent).get_span_context()
        if p is not None and p.is_valid and not p.is_remote:  # a local parent: its decision
            if not p.trace_flags.sampled:
                return trace_api.NonRecordingSpan(
                    SpanContext(p.trace_id, _new_id(64), False, _NOT_SAMPLED, p.trace_state)
                )
            return Span(name, kv, p.trace_id, p.span_id, False, p.trace_state, attributes, self.sink)
        remote = p is not None and p.is_valid
        if not remote and self._root is not None:  # a root, and a built-in sampler: its rule, inline
            trace_id = _new_id(128)
            if not self._root(trace_id):
                return trace_api.NonRecordingSpan(
                    SpanContext(trace_id, _new_id(64), False, _NOT_SAMPLED, _EMPTY_STATE)
                )
            return Span(name, kv, trace_id, 0, False, _EMPTY_STATE, attributes, self.sink)
        trace_id = p.trace_id if remote and p is not None else _new_id(128)
        ctx = parent if remote else Context()
        r = self.sampler.should_sample(ctx, trace_id, name, _KINDS[kind], attributes)
        state = r.trace_state
        if state is None:
            state = p.trace_state if remote and p is not None else _EMPTY_STATE
        if not r.decision.is_sampled():
            return trace_api.NonRecordingSpan(SpanContext(trace_id, _new_id(64), False, _NOT_SAMPLED, state))
        if r.attributes:
            attributes = {**(attributes or {}), **r.attributes}
        parent_id = p.span_id if remote and p is not None else 0
        return Span(name, kv, trace_id, parent_id, remote, state, attributes, self.sink)


def root_decision(sampler: Any) -> Callable[[int], bool] | None:
    """The decision the SDK's built-in samplers make for a new trace (no parent),
    as a function of its trace id: ``ParentBased`` (the default) delegates a root
    to its root sampler; ``TraceIdRatioBased`` samples a trace id whose low 64 bits
    are under its bound; ``ALWAYS_ON``/``ALWAYS_OFF`` always decide the same. Their
    ``should_sample`` builds a result object per span (~1 µs); this is the same
    rule without it. None for any other sampler (then ``should_sample`` decides)."""
    from opentelemetry.sdk.trace import sampling

    if type(sampler).should_sample is sampling.ParentBased.should_sample:
        sampler = getattr(sampler, "_root", None)
    kind = getattr(type(sampler), "should_sample", None)
    if kind is sampling.TraceIdRatioBased.should_sample:
        limit, bound = sampling.TraceIdRatioBased.TRACE_ID_LIMIT, sampler.bound
        return lambda trace_id: trace_id & limit < bound
    if kind is sampling.StaticSampler.should_sample:
        sampled = sampler._decision.is_sampled()
        return lambda trace_id: sampled
    return None


def readable(rec: Sequence[Any], resource: Any, scope: Any) -> Any:
    """A record as the SDK's ``ReadableSpan`` (attributes checked as the SDK checks them)."""
    from opentelemetry.attributes import BoundedAttributes
    from opentelemetry.sdk.trace import Event, ReadableSpan

    name, kind, tid, sid, pid, remote, state, start, end, attrs, code, desc, events = rec
    ts = TraceState.from_header([state]) if state else _EMPTY_STATE
    return ReadableSpan(
        name=name,
        context=SpanContext(tid, sid, False, _SAMPLED, ts),
        parent=SpanContext(tid, pid, bool(remote), _SAMPLED, ts) if pid else None,
        resource=resource,
        attributes=BoundedAttributes(attributes=attrs, immutable=True),
        events=[Event(n, BoundedAttributes(attributes=a, immutable=True), t) for n, t, a in events],
        kind=SpanKind(kind),
        status=Status(StatusCode(code), desc),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


class Using:
    """``span`` current in a block: what OpenTelemetry's ``use_span`` does, as a
    class rather than a generator (about half its cost). With ``end`` (``use_span``'s
    ``end_on_exit``, ``record_exception``) the block's exception is recorded on the
    span and the span ends; either way an ``Exception`` sets its status to ERROR."""

    __slots__ = ("_end", "_span", "_token")

    def __init__(self, span: trace_api.Span, end: bool) -> None:
        self._span = span
        self._end = end

    def __enter__(self) -> trace_api.Span:
        self._token = context_api.attach(context_api.set_value(_SPAN_KEY, self._span))
        return self._span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        try:
            context_api.detach(self._token)
            # As use_span: only an Exception (not GeneratorExit, a cancellation) fails the span.
            if isinstance(exc, Exception) and span.is_recording():
                if self._end:
                    span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._end:
                span.end()
