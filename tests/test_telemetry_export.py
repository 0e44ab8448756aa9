"""tollway's spans (observe/spans.py) and where they go (observe/span_export.py):
the sampler's decisions, the API's semantics kept, the records the SDK
receives, and the exporter process: batches, flushes, odd attribute values,
a full queue and a dead child."""

from __future__ import annotations

import decimal
import logging
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from test_telemetry_otlp import Collector, collector  # noqa: F401  (the fixture)
from tollway.observe import span_export, tracing
from tollway.observe.config import TelemetryConfig
from tollway.observe.spans import Recorder, Span

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"

pytest_plugins = ["telemetry_support"]  # the fixture spans: every span kept in memory


def _incoming(flags: str, state: str = "") -> Any:
    headers = [(b"traceparent", f"00-{PARENT_TRACE}-{PARENT_SPAN}-{flags}".encode())]
    if state:
        headers.append((b"tracestate", state.encode()))
    return tracing.extract(headers)


def test_children_follow_their_parent_and_the_sdk_gets_readable_spans(spans: InMemorySpanExporter) -> None:
    root = tracing.start("POST", kind="server", attributes={"http.request.method": "POST"})
    assert isinstance(root, Span)
    with tracing.use(root):
        with tracing.span("ledger.batch") as child:
            assert child is not None and child.is_recording()
            child.set_attributes({"n": 3, "ok": True, "tags": ("a", "b")})
        ai = tracing.start("chat m", kind="client")
    assert ai is not None
    ai.set_status(StatusCode.ERROR, "boom")
    ai.end()
    ai.set_attribute("late", 1)  # after the end: ignored, as the SDK ignores it
    root.set_status(StatusCode.OK)
    root.set_status(StatusCode.ERROR, "later")  # OK is final
    root.end()
    root.end()  # twice: one span
    done = {s.name: s for s in spans.get_finished_spans()}
    assert set(done) == {"POST", "ledger.batch", "chat m"} and len(spans.get_finished_spans()) == 3
    r, c, a = done["POST"], done["ledger.batch"], done["chat m"]
    assert r.parent is None and r.kind == SpanKind.SERVER and r.status.status_code == StatusCode.OK
    assert c.parent is not None and c.parent.span_id == r.context.span_id
    assert c.context.trace_id == r.context.trace_id and c.kind == SpanKind.INTERNAL
    assert dict(c.attributes or {}) == {"n": 3, "ok": True, "tags": ("a", "b")}
    assert a.kind == SpanKind.CLIENT and a.status.status_code == StatusCode.ERROR
    assert a.status.description == "boom" and "late" not in (a.attributes or {})
    assert r.resource.attributes["service.name"] == "tollway"
    assert r.instrumentation_scope is not None and r.instrumentation_scope.name == "tollway"
    assert r.start_time is not None and r.end_time is not None and r.start_time <= r.end_time


def test_an_exception_in_a_span_block_is_recorded(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("retrieval"):
        raise ValueError("no index")
    [s] = spans.get_finished_spans()
    assert s.status.status_code == StatusCode.ERROR
    [ev] = s.events
    assert ev.name == "exception" and ev.attributes is not None
    assert ev.attributes["exception.type"] == "ValueError"
    assert ev.attributes["exception.message"] == "no index"


def test_a_remote_parent_and_its_tracestate_are_kept(spans: InMemorySpanExporter) -> None:
    s = tracing.start("POST", kind="server", parent=_incoming("01", "vendor=abc"))
    assert s is not None and s.is_recording()
    ctx = s.get_span_context()
    assert f"{ctx.trace_id:032x}" == PARENT_TRACE and ctx.trace_state.get("vendor") == "abc"
    s.end()
    [done] = spans.get_finished_spans()
    assert done.parent is not None and f"{done.parent.span_id:016x}" == PARENT_SPAN and done.parent.is_remote


def test_an_unsampled_remote_parent_records_nothing_but_propagates(
    spans: InMemorySpanExporter,
) -> None:
    s = tracing.start("POST", kind="server", parent=_incoming("00"))
    assert isinstance(s, trace_api.NonRecordingSpan) and not s.is_recording()
    with tracing.use(s):
        tp = tracing.traceparent()
        assert tp is not None and tp.startswith(f"00-{PARENT_TRACE}-") and tp.endswith("-00")
        with tracing.span("child") as c:  # follows its parent: not sampled
            assert c is not None and not c.is_recording()
    s.end()
    assert spans.get_finished_spans() == ()


def test_the_ratio_sampler_decides_at_the_root() -> None:
    got: list[Any] = []
    never = Recorder(sampling.ParentBased(sampling.TraceIdRatioBased(0.0)), got.append)
    s = never.start("x")
    assert not s.is_recording() and s.get_span_context().is_valid
    always = Recorder(sampling.ParentBased(sampling.TraceIdRatioBased(1.0)), got.append)
    s = always.start("x", root=True)
    s.end()
    assert len(got) == 1 and got[0][0] == "x"


# ------------------------------------------------------------ the exporter process
# (test_telemetry_otlp's collector: an OTLP/HTTP receiver the test runs)


@pytest.mark.parametrize("sdk_encoder", [False, True])
def test_batches_reach_the_collector_through_the_child(
    collector: Collector,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    sdk_encoder: bool,
) -> None:
    """The child's own OTLP encoding, and (sdk_encoder: what an exporter without the
    HTTP client the child uses gets) ReadableSpans through the exporter's export."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64")
    if sdk_encoder:
        sink = span_export.ChildSink(f"{collector.url}/v1/traces", "svc-x", sdk_encoder=True)
        tracing._turn_on(sink, sampling.ParentBased(sampling.ALWAYS_ON))
    else:
        assert tracing.configure(TelemetryConfig(otlp_endpoint=collector.url, service_name="svc-x"), {})
    sink = tracing._sink
    assert isinstance(sink, span_export.ChildSink) and sink.batch == 64
    for i in range(300):
        with tracing.span(f"s{i}") as s:
            assert s is not None
            # a value marshal can't carry goes as its text; the rest of the batch is untouched
            s.set_attributes({"i": i, "odd": decimal.Decimal("1.5") if i == 7 else "plain"})
    tracing.force_flush()
    got = collector.spans()
    names = {s.name: a for _, s, a in got}
    assert len(got) == 300 and {svc for svc, _, _ in got} == {"svc-x"}
    assert names["s7"] == {"i": 7, "odd": "1.5"} and names["s8"] == {"i": 8, "odd": "plain"}
    child = sink._child
    tracing.disable()  # the child exits when its input closes
    assert child.wait(timeout=10) == 0


def test_a_full_queue_drops_and_says_so(
    collector: Collector,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    assert tracing.configure(TelemetryConfig(otlp_endpoint=collector.url), {})
    sink = tracing._sink
    assert isinstance(sink, span_export.ChildSink)
    with sink._io:  # the sender is held up: the queue fills
        with caplog.at_level(logging.WARNING, "tollway.observe"):
            for i in range(25):
                with tracing.span(f"s{i}"):
                    pass
    assert sink.dropped == 15 and "span queue full" in caplog.text
    tracing.force_flush()
    assert len(collector.spans()) == 10


def test_a_dead_exporter_process_drops_spans_and_the_server_goes_on(
    collector: Collector,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tracing.configure(TelemetryConfig(otlp_endpoint=collector.url), {})
    sink = tracing._sink
    assert isinstance(sink, span_export.ChildSink)
    sink._child.kill()
    sink._child.wait(timeout=10)
    with caplog.at_level(logging.ERROR, "tollway.observe"):
        with tracing.span("after") as s:
            assert s is not None
        tracing.force_flush()  # returns; nothing raised
    assert "span exporter process is gone" in caplog.text
    assert collector.spans() == []
