"""End to end: tollway configured by the standard variables exports its spans
over OTLP/HTTP (protobuf) to a collector the test runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fake_upstream import FakeUpstream
from test_inference import Env
from tollway.observe import tracing
from tollway.observe.config import TelemetryConfig
from upstream_env import uenv, up  # noqa: F401  (fixtures)


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.content_types: list[str] = []
        got = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    msg = ExportTraceServiceRequest()
                    msg.ParseFromString(body)
                    got.requests.append(msg)
                    got.content_types.append(self.headers["Content-Type"])
                elif self.path == "/v1/metrics":
                    m = ExportMetricsServiceRequest()
                    m.ParseFromString(body)
                    got.metrics.append(m)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """(resource service.name, span, attributes) for every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append((service, s, {a.key: _value(a.value) for a in s.attributes}))
        return out


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind)


async def _chat_flushed(env: Env) -> Any:
    """One chat completion (a 200), and what telemetry recorded of it flushed."""
    r = await env.http.post(
        "/v1/chat/completions",
        json={"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=env.auth,
    )
    assert r.status_code == 200
    tracing.force_flush()
    return r


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        tracing.disable()
        c.server.shutdown()


async def test_spans_reach_a_collector_over_otlp_http(
    uenv: Env,  # noqa: F811
    up: FakeUpstream,  # noqa: F811
    collector: Collector,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "tollway-e2e",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    }
    # The exporter reads the endpoint from the environment, as in production.
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert tracing.configure(TelemetryConfig(), env)
    r = await _chat_flushed(uenv)
    assert collector.content_types and all(ct == "application/x-protobuf" for ct in collector.content_types)
    spans = collector.spans()
    assert {service for service, _, _ in spans} == {"tollway-e2e"}
    [(_, chat, attrs)] = [(sv, s, a) for sv, s, a in spans if s.name == "chat up"]
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "up"
    assert attrs["gen_ai.usage.output_tokens"] == r.json()["usage"]["completion_tokens"]
    assert attrs["tollway.charge_micros"] == int(r.headers["x-tollway-charged"])
    assert chat.trace_id.hex() == r.headers["x-trace-id"]
    [server] = [s for _, s, _ in spans if s.name == "POST /v1/chat/completions"]
    assert chat.parent_span_id == server.span_id


def test_sampler_ratio_zero_records_nothing_new(collector: Collector) -> None:
    assert tracing.configure(TelemetryConfig(otlp_endpoint=collector.url, sample_ratio=0.0), {})
    with tracing.span("x") as s:
        assert s is not None and not s.is_recording()
    tracing.force_flush()
    assert collector.spans() == []


async def test_genai_metrics_reach_a_collector_over_otlp_http(
    uenv: Env,  # noqa: F811
    up: FakeUpstream,  # noqa: F811
    collector: Collector,
) -> None:
    """[telemetry] otlp_metrics: the GenAI client metrics go to the collector's /v1/metrics."""
    cfg = TelemetryConfig(otlp_endpoint=collector.url, otlp_metrics=True)
    tracing.configure(cfg, {})
    r = await _chat_flushed(uenv)
    points: dict[tuple[str, str], float] = {}
    for req in collector.metrics:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for dp in m.histogram.data_points:
                        attrs = {a.key: a.value.string_value for a in dp.attributes}
                        if attrs.get("gen_ai.request.model") == "up":
                            points[(m.name, attrs.get("gen_ai.token.type", ""))] = dp.sum
    usage = r.json()["usage"]
    assert points[("gen_ai.client.token.usage", "input")] == usage["prompt_tokens"]
    assert points[("gen_ai.client.token.usage", "output")] == usage["completion_tokens"]
    assert points[("gen_ai.client.operation.duration", "")] > 0
