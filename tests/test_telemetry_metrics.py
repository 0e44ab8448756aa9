"""Metrics: the Prometheus series per route (the fast path by its template, a
real 404 apart) and per model, refusals, cache hits, bounded labels; the
OpenTelemetry GenAI metrics when they are on."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from fake_upstream import FakeUpstream
from test_inference import ADMIN, Env
from tollway.observe import metrics, plainseries, tracing
from upstream_env import uenv, up  # noqa: F401  (fixtures)

HI = [{"role": "user", "content": "hi"}]


def _v(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _chat(env: Env, model: str = "up", **extra: Any) -> Any:
    return await env.http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": HI, "max_tokens": 8, **extra},
        headers=env.auth,
    )


async def test_series_per_route_and_model(uenv: Env, up: FakeUpstream) -> None:  # noqa: F811
    chat = {"endpoint": "chat.completions", "model": "up"}
    before = {
        "http": _v("tollway_http_requests_total", method="POST", route="/v1/chat/completions", status="200"),
        "404": _v("tollway_http_requests_total", method="GET", route="unmatched", status="404"),
        "ok": _v("tollway_ai_requests_total", **chat, status="200"),
        "in": _v("tollway_ai_input_tokens_total", **chat),
        "out": _v("tollway_ai_output_tokens_total", **chat),
        "cost": _v("tollway_ai_cost_micro_usd_total", **chat),
        "ttft": _v("tollway_ai_time_to_first_token_seconds_count", **chat),
        "lat": _v("tollway_ai_request_seconds_count", **chat),
        "hit": _v("tollway_ai_cache_total", **chat, result="HIT"),
        "unknown": _v("tollway_ai_requests_total", endpoint="chat.completions", model="-", status="404"),
    }
    r = await _chat(uenv)
    assert r.status_code == 200
    body = r.json()
    assert (await uenv.http.get("/no/such/route")).status_code == 404
    # A cached answer: the second one is a hit.
    cached = {"x-tollway-cache-ttl": "60"}
    for _ in range(2):
        h = {**uenv.auth, **cached}
        rr = await uenv.http.post(
            "/v1/chat/completions", json={"model": "up", "messages": HI, "max_tokens": 3}, headers=h
        )
        assert rr.status_code == 200
    assert rr.headers["x-tollway-cache"] == "HIT"
    # An unknown model (any string a client sends) is not a label.
    assert (await _chat(uenv, model="no-such-model-" + "z" * 40)).status_code == 404

    # Scraped, as Prometheus does.
    text = (await uenv.http.get("/metrics")).text
    assert 'tollway_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert "no-such-model" not in text and 'customer="' not in text
    assert _v("tollway_http_requests_total", method="POST", route="/v1/chat/completions", status="200") == (
        before["http"] + 3
    )
    assert (
        _v("tollway_http_requests_total", method="GET", route="unmatched", status="404") == before["404"] + 1
    )
    assert _v("tollway_ai_requests_total", **chat, status="200") == before["ok"] + 3
    usage = body["usage"]
    assert _v("tollway_ai_input_tokens_total", **chat) >= before["in"] + usage["prompt_tokens"]
    assert _v("tollway_ai_output_tokens_total", **chat) >= before["out"] + usage["completion_tokens"]
    assert _v("tollway_ai_cost_micro_usd_total", **chat) >= before["cost"] + int(
        r.headers["x-tollway-charged"]
    )
    assert _v("tollway_ai_time_to_first_token_seconds_count", **chat) == before["ttft"] + 2  # not the hit
    assert _v("tollway_ai_request_seconds_count", **chat) == before["lat"] + 3
    assert _v("tollway_ai_cache_total", **chat, result="HIT") == before["hit"] + 1
    assert (
        _v("tollway_ai_requests_total", endpoint="chat.completions", model="-", status="404")
        == before["unknown"] + 1
    )


async def test_rate_limit_and_budget_refusals_are_counted(uenv: Env, up: FakeUpstream) -> None:  # noqa: F811
    cid = uenv.customer["id"]
    rl = {"endpoint": "chat.completions", "code": "rate_limit_exceeded"}
    budget = {"endpoint": "chat.completions", "code": "budget_exceeded"}
    b_rl, b_budget = _v("tollway_ai_refusals_total", **rl), _v("tollway_ai_refusals_total", **budget)
    r = await uenv.http.patch(f"/admin/customers/{cid}/limits", json={"rpm": 1}, headers=ADMIN)
    assert r.status_code == 200
    assert (await _chat(uenv)).status_code == 200
    assert (await _chat(uenv)).status_code == 429
    assert _v("tollway_ai_refusals_total", **rl) == b_rl + 1
    r = await uenv.http.patch(
        f"/admin/customers/{cid}/limits", json={"rpm": None, "daily_budget": "$0.000001"}, headers=ADMIN
    )
    assert r.status_code == 200
    assert (await _chat(uenv)).status_code == 402
    assert _v("tollway_ai_refusals_total", **budget) == b_budget + 1


async def test_customer_labels_only_when_opted_in(uenv: Env, up: FakeUpstream) -> None:  # noqa: F811
    metrics.CUSTOMER_LABEL = True
    try:
        assert (await _chat(uenv)).status_code == 200
    finally:
        metrics.CUSTOMER_LABEL = False
    cid = uenv.customer["id"]
    assert _v("tollway_ai_customer_requests_total", customer=cid, model="up") == 1
    assert _v("tollway_ai_customer_cost_micro_usd_total", customer=cid, model="up") > 0


_CACHES = st.sampled_from([None, "HIT", "MISS", "BYPASS"])
_ROWS = st.lists(
    st.builds(
        SimpleNamespace,
        endpoint=st.sampled_from(["chat.completions", "embeddings"]),
        model=st.sampled_from(["a", "b"]),
        status=st.sampled_from([200, 400, 502]),
        cache=_CACHES,
        input_tokens=st.integers(0, 10**6),
        output_tokens=st.integers(0, 10**6),
        cost=st.integers(0, 10**9),
        latency_ms=st.integers(0, 200_000),  # past the last bound too
        ttft_ms=st.none() | st.integers(0, 40_000),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_ROWS)
def test_the_ai_series_expose_what_the_librarys_own_series_would(rows: list[Any]) -> None:
    """metrics.AiSeries counts in plain numbers; its samples must equal those of
    prometheus_client's labelled Counters and Histograms fed the same rows."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    series = metrics.AiSeries()
    ours.register(series)
    lab = ["endpoint", "model"]
    b = metrics._SECONDS_BUCKETS
    ref = {
        "req": Counter(
            "tollway_ai_requests",
            "AI requests by endpoint, model and status",
            [*lab, "status"],
            registry=theirs,
        ),
        "in": Counter("tollway_ai_input_tokens", "Input tokens", lab, registry=theirs),
        "out": Counter("tollway_ai_output_tokens", "Output tokens", lab, registry=theirs),
        "cost": Counter(
            "tollway_ai_cost_micro_usd", "Micro-USD charged for AI requests", lab, registry=theirs
        ),
        "lat": Histogram(
            "tollway_ai_request_seconds",
            "AI request latency, start to end (a stream: to its last chunk)",
            lab,
            buckets=b,
            registry=theirs,
        ),
        "ttft": Histogram(
            "tollway_ai_time_to_first_token_seconds",
            "Time to the first token",
            lab,
            buckets=metrics._TTFT_BUCKETS,
            registry=theirs,
        ),
        "cache": Counter(
            "tollway_ai_cache", "Response cache lookups by result", [*lab, "result"], registry=theirs
        ),
    }
    for r in rows:
        series.observe(r.endpoint, r.model, r.status, r)
        k = (r.endpoint, r.model)
        ref["req"].labels(*k, str(r.status)).inc()
        ref["in"].labels(*k).inc(r.input_tokens)
        ref["out"].labels(*k).inc(r.output_tokens)
        ref["cost"].labels(*k).inc(r.cost)
        ref["lat"].labels(*k).observe(r.latency_ms / 1000)
        if r.ttft_ms is not None and r.cache != "HIT":
            ref["ttft"].labels(*k).observe(r.ttft_ms / 1000)
        else:
            ref["ttft"].labels(*k)
        ref["cache"].labels(*k, "HIT").inc(r.cache == "HIT")
        ref["cache"].labels(*k, "MISS").inc(r.cache == "MISS")

    def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for fam in reg.collect():
            for smp in fam.samples:
                if not smp.name.endswith("_created"):
                    out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
        return out

    mine, want = samples(ours), samples(theirs)
    assert mine.keys() == want.keys()
    for key, v in want.items():
        assert mine[key] == pytest.approx(v, rel=1e-9, abs=1e-9), key


_BOUNDS = (0.0005, 0.001, 0.0025, 0.01, 1, 2.5, 10)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST"]),
            st.sampled_from(["/a", "/b/{id}", 'q"\\\n']),  # label values the exposition escapes
            st.sampled_from(["200", "404"]),
            st.one_of(st.sampled_from(_BOUNDS), st.floats(0, 30, allow_nan=False)),  # on the bounds too
            st.integers(0, 10**12),
        ),
        max_size=40,
    )
)
def test_plain_series_expose_exactly_what_the_librarys_own_would(obs: list[Any]) -> None:
    """observe/plainseries.py's counters and histograms (the HTTP, ledger and charge
    series): the same exposition text as prometheus_client's, byte for byte."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lab = ["method", "route", "status"]
    counts = plainseries.Counters("t_requests_total", "Requests", lab, registry=ours)
    spread = plainseries.Histograms("t_seconds", "Latency", lab[:2], buckets=_BOUNDS, registry=ours)
    total = plainseries.Counters("t_micro_total", "Micro-USD", registry=ours).labels()
    one = plainseries.Histograms("t_batch", "Batch", buckets=(1, 2, 4), registry=ours).labels()
    ref_counts = Counter("t_requests_total", "Requests", lab, registry=theirs)
    ref_spread = Histogram("t_seconds", "Latency", lab[:2], buckets=_BOUNDS, registry=theirs)
    ref_total = Counter("t_micro_total", "Micro-USD", registry=theirs)
    ref_one = Histogram("t_batch", "Batch", buckets=(1, 2, 4), registry=theirs)
    for method, route, status, seconds, micros in obs:
        counts.labels(method, route, status).inc()
        ref_counts.labels(method, route, status).inc()
        spread.labels(method, route).observe(seconds)
        ref_spread.labels(method, route).observe(seconds)
        total.inc(micros)
        ref_total.inc(micros)
        one.observe(micros % 7)
        ref_one.observe(micros % 7)
    assert generate_latest(ours) == generate_latest(theirs)
    with pytest.raises(ValueError):
        counts.labels("GET")


@pytest.fixture
def genai() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    tracing.enable_metrics(reader)
    try:
        yield reader
    finally:
        tracing.disable()


async def test_otel_genai_metrics(uenv: Env, up: FakeUpstream, genai: InMemoryMetricReader) -> None:  # noqa: F811
    r = await _chat(uenv)
    assert r.status_code == 200
    data = genai.get_metrics_data()
    assert data is not None
    found = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    tokens = found["gen_ai.client.token.usage"]
    by_type = {p.attributes["gen_ai.token.type"]: p for p in tokens.data.data_points}  # type: ignore[index]
    usage = r.json()["usage"]
    assert (
        by_type["input"].sum == usage["prompt_tokens"] and by_type["output"].sum == usage["completion_tokens"]
    )
    point = by_type["input"]
    assert point.attributes is not None
    assert (
        point.attributes["gen_ai.request.model"] == "up"
        and point.attributes["gen_ai.provider.name"] == "openai"
    )
    assert point.attributes["gen_ai.operation.name"] == "chat"
    [duration] = found["gen_ai.client.operation.duration"].data.data_points  # type: ignore[attr-defined]
    assert duration.count == 1 and duration.sum > 0
