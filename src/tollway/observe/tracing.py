"""OpenTelemetry traces (and the GenAI metrics), off unless configured.

:data:`ENABLED` is the one switch the hot path reads: while it is false,
:func:`span` hands back a shared no-op context (no span object, no attribute
dict), :func:`traceparent_line` returns ``b""`` and the server span is skipped.
:func:`configure` turns it on from ``[telemetry]`` or the standard ``OTEL_*``
variables; tests call :func:`enable` with their own span processor.

Use::

    with tracing.span("ledger.batch") as s:
        if s is not None:          # only when tracing is on
            s.set_attribute("tollway.ledger.batch_size", n)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tollway.observe.config import TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Span

    from tollway.observe.span_export import ChildSink, ProcessorSink
    from tollway.observe.spans import Recorder

log = logging.getLogger("tollway.observe")

ENABLED = False  # tracing on: read by the hot path
_recorder: Recorder | None = None
_sink: ProcessorSink | ChildSink | None = None
METRICS_ENABLED = False  # the OTLP GenAI metrics on
_meter_provider: Any = None
_genai: tuple[Any, Any] | None = None  # (token usage, operation duration) histograms
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()
# Bound when traces first turn on (observe.spans imports the OpenTelemetry API's
# context, which a server with traces off never loads): what the hot path calls.
_using: Any = None  # spans.Using
_current_span: Any = None  # opentelemetry.trace.get_current_span
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_ZERO_TRACE = "0" * 32


def wanted(cfg: TelemetryConfig, env: Mapping[str, str] = os.environ) -> bool:
    """Whether traces are configured: ``[telemetry] traces``, an OTLP endpoint,
    or ``OTEL_TRACES_EXPORTER=otlp``; ``OTEL_SDK_DISABLED=true`` and
    ``OTEL_TRACES_EXPORTER=none`` turn them off."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        cfg.traces
        or cfg.otlp_endpoint
        or exporter == "otlp"
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _sampler(cfg: TelemetryConfig, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.trace import sampling

    if env.get("OTEL_TRACES_SAMPLER"):
        return sampling._get_from_env_or_default()  # the SDK's own reading of the variables
    return sampling.ParentBased(sampling.TraceIdRatioBased(cfg.sample_ratio))


def _endpoint(cfg: TelemetryConfig, signal: str) -> str | None:
    return f"{cfg.otlp_endpoint.rstrip('/')}/v1/{signal}" if cfg.otlp_endpoint else None


def configure(cfg: TelemetryConfig, env: Mapping[str, str] = os.environ) -> bool:
    """Turn traces (and the OTLP GenAI metrics) on if configured; returns whether traces are on.
    Spans are exported by the official OTLP/HTTP exporter in a child process
    (``span_export.ChildSink``)."""
    if cfg.otlp_metrics or env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "otlp":
        _configure_metrics(cfg, env)
    if not wanted(cfg, env):
        return False
    from tollway.observe.span_export import ChildSink

    sink = ChildSink(_endpoint(cfg, "traces"), cfg.service_name)  # None: the OTEL_* variables
    _turn_on(sink, _sampler(cfg, env))
    log.info("OpenTelemetry traces on")
    return True


def enable(processor: SpanProcessor, *, sampler: Any = None, resource: Any = None) -> None:
    """Traces on, each span handed to ``processor`` in this process as it ends
    (tests: a SimpleSpanProcessor over an in-memory exporter)."""
    from opentelemetry.sdk.trace import sampling

    from tollway.observe import span_export

    res = resource if resource is not None else span_export.resource("tollway")
    _turn_on(span_export.ProcessorSink(processor, res), sampler or sampling.ParentBased(sampling.ALWAYS_ON))


def _turn_on(sink: ProcessorSink | ChildSink, sampler: Any) -> None:
    global ENABLED, _recorder, _sink, _using, _current_span
    from opentelemetry.trace import get_current_span

    from tollway.observe.spans import Recorder, Using

    _using, _current_span = Using, get_current_span

    old, _sink = _sink, sink
    _recorder = Recorder(sampler, sink)
    ENABLED = True
    if old is not None:  # configured again (another app in the process): the old one flushes
        old.shutdown()


def disable() -> None:
    """Traces off (flushing what was recorded); metrics too."""
    global ENABLED, _recorder, _sink, METRICS_ENABLED, _meter_provider, _genai
    ENABLED = False
    if _sink is not None:
        _sink.shutdown()
    _sink = _recorder = None
    METRICS_ENABLED = False
    if _meter_provider is not None:
        _meter_provider.shutdown()
    _meter_provider = _genai = None


def force_flush() -> None:
    if _sink is not None:
        _sink.force_flush()
    if _meter_provider is not None:
        _meter_provider.force_flush()


# ----------------------------------------------------------------- spans


def span(name: str, *, kind: str = "internal") -> contextlib.AbstractContextManager[Span | None]:
    """A span around a block, current inside it (``None`` when tracing is off).
    ``kind``: internal, client, server, producer or consumer."""
    if not ENABLED:
        return _NOOP
    return _span(name, kind)


def _span(name: str, kind: str) -> contextlib.AbstractContextManager[Span]:
    assert _recorder is not None
    # current inside the block, ended after it; an exception escaping it is recorded and fails it
    return _using(_recorder.start(name, kind), True)  # type: ignore[no-any-return]


def start(
    name: str,
    *,
    kind: str = "internal",
    parent: Context | None = None,
    attributes: dict[str, Any] | None = None,
    root: bool = False,
) -> Span | None:
    """A span ended by its caller (``end(s)``): one that outlives a block, as a stream's.
    ``attributes`` are set as it starts (one pass, cheaper than one call each); ``root``:
    a trace of its own, whatever context the calling task inherited."""
    if not ENABLED:
        return None
    assert _recorder is not None
    return _recorder.start(name, kind, parent, attributes, root)


def use(s: Span | None) -> contextlib.AbstractContextManager[Any]:
    """Make ``s`` the current span in a block (without ending it)."""
    if s is None:
        return _NOOP
    return _using(s, False)  # type: ignore[no-any-return]


def fail(s: Span | None, err: BaseException) -> None:
    """Mark a span failed (the error's type; a tollway error's code)."""
    if s is None:
        return
    from opentelemetry.trace import Status, StatusCode

    code = getattr(err, "code", None)
    s.set_attribute("error.type", code if isinstance(code, str) else type(err).__name__)
    s.set_status(Status(StatusCode.ERROR, str(err)[:200]))


# ------------------------------------------------------ the W3C context


def extract(headers: list[tuple[bytes, bytes]]) -> Context | None:
    """The parent context from an incoming ``traceparent`` (and ``tracestate``)."""
    carrier = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")
    }
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def traceparent() -> str | None:
    """The current span as a ``traceparent`` value, or None (off, or no span); the W3C
    format written directly (the propagator's inject costs several times more)."""
    if not ENABLED:
        return None
    ctx = _current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def traceparent_line() -> bytes:
    """An HTTP/1.1 header line carrying the current span to an upstream (``b""`` when off)."""
    if not ENABLED:
        return b""
    tp = traceparent()
    return f"traceparent: {tp}\r\n".encode("latin-1") if tp else b""


def outgoing(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current ``traceparent`` (the same dict when off)."""
    tp = traceparent()
    return headers if tp is None else {**headers, "traceparent": tp}


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, or None."""
    if not ENABLED:
        return None
    ctx = _current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def incoming_trace_id(value: bytes) -> str | None:
    """The trace id of a well-formed incoming ``traceparent`` (kept while tracing is off)."""
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    tid = m.group(1).decode()
    return None if tid == _ZERO_TRACE else tid


# ------------------------------------------------- the GenAI metrics (OTLP)


def _configure_metrics(cfg: TelemetryConfig, env: Mapping[str, str]) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from tollway.observe import span_export

    enable_metrics(
        PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=_endpoint(cfg, "metrics"))),
        resource=span_export.resource(cfg.service_name),
    )


def enable_metrics(reader: Any, *, resource: Any = None) -> None:
    """The OTel GenAI client metrics on, read by ``reader`` (tests: an InMemoryMetricReader)."""
    global METRICS_ENABLED, _meter_provider, _genai
    from opentelemetry.sdk.metrics import MeterProvider

    from tollway import __version__

    kwargs: dict[str, Any] = {"metric_readers": [reader]}
    if resource is not None:
        kwargs["resource"] = resource
    if _meter_provider is not None:
        _meter_provider.shutdown()
    _meter_provider = MeterProvider(**kwargs)
    meter = _meter_provider.get_meter("tollway", __version__)
    _genai = (
        meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per model call"
        ),
        meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        ),
    )
    METRICS_ENABLED = True


def record_genai(
    operation: str,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    seconds: float,
    error: str | None,
) -> None:
    """One model call into the GenAI metrics (a no-op unless they are on)."""
    if _genai is None:
        return
    tokens, duration = _genai
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    if error is not None:
        duration.record(seconds, {**attrs, "error.type": error})
        return
    duration.record(seconds, attrs)
    tokens.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
    tokens.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})


# ------------------------------------------------ the GenAI span attributes


def genai_span(operation: str, model: str, provider: str) -> Span | None:
    """A model call's client span (``chat smollm2``), with the request's GenAI attributes."""
    return start(
        f"{operation} {model}",
        kind="client",
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
        },
    )


def genai_end(
    s: Span | None,
    *,
    provider: str,
    response_model: str,
    input_tokens: int,
    output_tokens: int | None,
    finish_reason: str | None,
    charge_micros: int,
    attempts: int,
) -> None:
    """A model call's outcome on its span, which ends."""
    if s is None:
        return
    a: dict[str, Any] = {
        "gen_ai.provider.name": provider,  # the deployment that served (a router's)
        "gen_ai.response.model": response_model,
        "gen_ai.usage.input_tokens": input_tokens,
        "tollway.charge_micros": charge_micros,
        "tollway.attempts": attempts,
    }
    if output_tokens is not None:
        a["gen_ai.usage.output_tokens"] = output_tokens
    if finish_reason is not None:
        a["gen_ai.response.finish_reasons"] = (finish_reason,)
    s.set_attributes(a)
    s.end()


def end(s: Span | None, err: BaseException | None = None) -> None:
    """End a span from :func:`start` (failed, with ``err``)."""
    if s is None:
        return
    if err is not None:
        fail(s, err)
    s.end()
