"""Traces: the server span honours an incoming traceparent, the model call's
span carries the GenAI attributes and the charge, the upstream gets the
traceparent, the trace id is in the request log and the response headers;
with tracing off nothing of it is built."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fake_upstream import FakeUpstream, model
from test_inference import Env, make_env
from tollway.observe import tracing
from tollway.observe.config import TelemetryConfig
from upstream_env import uenv, up  # noqa: F401  (fixtures)

pytest_plugins = ["telemetry_support"]  # the fixture spans

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
HI = [{"role": "user", "content": "hi"}]


def _by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def _chat(env: Env, **headers: str) -> Any:
    r = await env.http.post(
        "/v1/chat/completions",
        json={"model": "up", "messages": HI, "max_tokens": 8},
        headers={**env.auth, **headers},
    )
    assert r.status_code == 200, r.text
    return r


async def test_chat_spans_carry_genai_attributes_and_the_incoming_trace(
    uenv: Env,  # noqa: F811
    up: FakeUpstream,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    r = await _chat(uenv, traceparent=TRACEPARENT)
    await uenv.rt.gateway.log.flush()
    done = spans.get_finished_spans()
    [server] = [s for s in done if s.kind == SpanKind.SERVER]
    assert server.name == "POST /v1/chat/completions"
    assert f"{server.context.trace_id:032x}" == TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    [chat] = _by_name(done, "chat up")
    assert chat.kind == SpanKind.CLIENT
    assert chat.parent is not None and chat.parent.span_id == server.context.span_id
    a = chat.attributes
    assert a is not None
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "up"
    assert a["gen_ai.response.model"] == "up"
    body = r.json()
    assert a["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert a["gen_ai.response.finish_reasons"] == (body["choices"][0]["finish_reason"],)
    assert a["tollway.charge_micros"] == int(r.headers["x-tollway-charged"]) > 0
    # Out: the upstream saw the model call's span as its parent.
    assert up.last_headers["traceparent"] == f"00-{TRACE}-{chat.context.span_id:016x}-01"
    # Back: the response names the trace; the request log keeps it.
    assert r.headers["x-trace-id"] == TRACE
    assert r.headers["traceparent"].startswith(f"00-{TRACE}-{server.context.span_id:016x}-")
    assert r.headers["x-request-id"]
    [row] = await uenv.rt.gateway.log.query(limit=1)
    assert row["trace_id"] == TRACE
    # The ledger's batches are traced too: the writer's own root spans, whichever request's
    # context the writer task was started in.
    batches = _by_name(done, "ledger.batch")
    assert batches and all(b.parent is None for b in batches), [(b.parent, b.attributes) for b in batches]
    assert all(b.attributes and "tollway.ledger.batch_size" in b.attributes for b in batches)


async def test_a_new_trace_without_traceparent_and_the_stream_span(
    uenv: Env,  # noqa: F811
    up: FakeUpstream,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    r = await uenv.http.post(
        "/v1/chat/completions",
        json={"model": "up", "messages": HI, "max_tokens": 8, "stream": True},
        headers=uenv.auth,
    )
    assert r.status_code == 200
    done = spans.get_finished_spans()
    [server] = [s for s in done if s.kind == SpanKind.SERVER]
    assert server.parent is None
    [chat] = _by_name(done, "chat up")
    assert chat.attributes is not None and chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert f"{chat.context.trace_id:032x}" == r.headers["x-trace-id"]
    assert "traceparent" in up.last_headers


async def test_a_failed_call_span_is_an_error(
    uenv: Env,  # noqa: F811
    up: FakeUpstream,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    up.fail_next(1, status=400)  # not retried: one call
    r = await uenv.http.post(
        "/v1/chat/completions", json={"model": "up", "messages": HI, "max_tokens": 8}, headers=uenv.auth
    )
    assert r.status_code >= 400
    [chat] = _by_name(spans.get_finished_spans(), "chat up")
    assert not chat.status.is_ok and chat.attributes is not None and "error.type" in chat.attributes


async def test_tracing_off_builds_nothing_but_keeps_ids(uenv: Env, up: FakeUpstream) -> None:  # noqa: F811
    assert not tracing.ENABLED
    assert tracing.traceparent_line() == b"" and tracing.start("x") is None
    with tracing.span("x") as s:
        assert s is None
    r = await _chat(uenv, traceparent=TRACEPARENT, **{"x-request-id": "client-id.1"})
    assert "traceparent" not in up.last_headers
    # The incoming trace id still correlates logs and the request log; the request id is echoed.
    assert r.headers["x-trace-id"] == TRACE and r.headers["x-request-id"] == "client-id.1"
    assert "traceparent" not in r.headers
    await uenv.rt.gateway.log.flush()
    [row] = await uenv.rt.gateway.log.query(limit=1)
    assert row["trace_id"] == TRACE


@pytest.mark.parametrize("value", ["x" * 129, "bad id", "ünïcode", "a\u0000b", "../../etc", "<b>", ""])
async def test_insane_request_ids_are_replaced(uenv: Env, value: str) -> None:  # noqa: F811
    r = await uenv.http.get("/healthz", headers=[(b"x-request-id", value.encode("utf-8"))])
    assert r.headers["x-request-id"] != value and r.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    "value", ["00-zz-bad", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{PARENT}", "ünïcode", f"{TRACEPARENT}x"]
)
async def test_malformed_traceparents_are_ignored(uenv: Env, value: str) -> None:  # noqa: F811
    r = await uenv.http.get("/healthz", headers=[(b"traceparent", value.encode("utf-8"))])
    assert r.status_code == 200 and "x-trace-id" not in r.headers


def test_wanted_reads_the_standard_variables() -> None:
    off = TelemetryConfig()
    assert not tracing.wanted(off, {})
    assert tracing.wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing.wanted(off, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted(off, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing.wanted(TelemetryConfig(traces=True), {"OTEL_SDK_DISABLED": "true"})
    assert tracing.wanted(TelemetryConfig(traces=True), {})


async def test_a_routed_call_names_the_deployment_that_served(
    db_url: str,
    up: FakeUpstream,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    models = [
        model("a", up.url, upstream_model="gpt-upstream"),
        {"name": "routed", "task": "chat", "backend": "router", "deployments": [{"model": "a", "weight": 1}]},
    ]
    async for env in make_env(db_url, models=models):
        r = await env.http.post(
            "/v1/chat/completions",
            json={"model": "routed", "messages": HI, "max_tokens": 4},
            headers=env.auth,
        )
        assert r.status_code == 200, r.text
    [chat] = _by_name(spans.get_finished_spans(), "chat routed")
    a = chat.attributes
    assert a is not None
    assert a["gen_ai.request.model"] == "routed" and a["gen_ai.response.model"] == "gpt-upstream"
    assert a["gen_ai.provider.name"] == "openai"
