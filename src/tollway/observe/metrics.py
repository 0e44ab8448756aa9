"""Prometheus metrics, registered once per process on the default registry."""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]

LEDGER_BATCH_SIZE = Histogram(
    "tollway_ledger_batch_size",
    "Ledger requests committed per database transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
LEDGER_COMMIT_SECONDS = Histogram(
    "tollway_ledger_commit_seconds",
    "Time to load, apply and commit one ledger batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LEDGER_OPS = Counter(
    "tollway_ledger_requests_total",
    "Ledger requests by outcome",
    ["outcome"],
)
LEDGER_EXPIRED = Counter("tollway_ledger_expired_total", "Pending transfers voided by their timeout")
HTTP_REQUESTS = Counter("tollway_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "tollway_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
CHARGES = Counter("tollway_charges_total", "Charge-path holds by outcome", ["outcome"])
CHARGED_MICROS = Counter("tollway_charged_micro_usd_total", "Micro-USD posted by the charge path")
READY = Gauge("tollway_ready", "1 when the database is reachable and migrations are applied")
USAGE_ANOMALIES = Counter(
    "tollway_usage_anomalies_total", "Customer-days flagged: usage above k x the trailing median"
)
WALLET_FREEZES = Counter(
    "tollway_wallet_token_freezes_total", "Agent tokens frozen by the runaway-loop guard"
)

# The AI requests, per endpoint and model: one observation per request-log row
# (tollway.gateway.requestlog.RequestLog.record). Bounded labels: the model is
# labelled only once a registry model served it (a refused or unknown model is
# "-"), a refusal by its stable error code; customers only when opted in.
AI_REQUESTS = Counter(
    "tollway_ai_requests_total", "AI requests by endpoint, model and status", ["endpoint", "model", "status"]
)
AI_INPUT_TOKENS = Counter("tollway_ai_input_tokens_total", "Input tokens", ["endpoint", "model"])
AI_OUTPUT_TOKENS = Counter("tollway_ai_output_tokens_total", "Output tokens", ["endpoint", "model"])
AI_COST = Counter(
    "tollway_ai_cost_micro_usd_total", "Micro-USD charged for AI requests", ["endpoint", "model"]
)
AI_SECONDS = Histogram(
    "tollway_ai_request_seconds",
    "AI request latency, start to end (a stream: to its last chunk)",
    ["endpoint", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
AI_TTFT_SECONDS = Histogram(
    "tollway_ai_time_to_first_token_seconds",
    "Time to the first token",
    ["endpoint", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
AI_CACHE = Counter(
    "tollway_ai_cache_total", "Response cache lookups by result", ["endpoint", "model", "result"]
)
AI_REFUSALS = Counter(
    "tollway_ai_refusals_total",
    "AI requests refused by a rate limit (429) or a budget or quota (402), by error code",
    ["endpoint", "code"],
)
CUSTOMER_LABEL = False  # [telemetry] metrics_customer_label: the two series below
_customer_series: tuple[Counter, Counter] | None = None


class AiRequest(Protocol):
    """What a request-log row tells the metrics (tollway.gateway.requestlog.Entry)."""

    endpoint: str
    customer_id: str | None
    model: str | None
    deployment: str | None
    status: int
    error_code: str | None
    cache: str | None
    input_tokens: int
    output_tokens: int
    cost: int
    latency_ms: int
    ttft_ms: int | None


_ai_series: dict[tuple[str, str], tuple[Any, ...]] = {}
_ai_status: dict[tuple[str, str, int], Any] = {}


def record_ai(e: AiRequest) -> None:
    """Count one AI request (its row in the request log)."""
    model = e.model if e.model and (e.deployment or e.cache == "HIT") else "-"
    key = (e.endpoint, model)
    s = _ai_series.get(key)
    if s is None:
        s = _ai_series[key] = (
            AI_INPUT_TOKENS.labels(*key),
            AI_OUTPUT_TOKENS.labels(*key),
            AI_COST.labels(*key),
            AI_SECONDS.labels(*key),
            AI_TTFT_SECONDS.labels(*key),
            AI_CACHE.labels(*key, "HIT"),
            AI_CACHE.labels(*key, "MISS"),
        )
    skey = (e.endpoint, model, e.status)
    c = _ai_status.get(skey)
    if c is None:
        c = _ai_status[skey] = AI_REQUESTS.labels(e.endpoint, model, str(e.status))
    c.inc()
    if e.input_tokens:
        s[0].inc(e.input_tokens)
    if e.output_tokens:
        s[1].inc(e.output_tokens)
    if e.cost:
        s[2].inc(e.cost)
    s[3].observe(e.latency_ms / 1000)
    if e.ttft_ms is not None and e.cache != "HIT":
        s[4].observe(e.ttft_ms / 1000)
    if e.cache == "HIT":
        s[5].inc()
    elif e.cache == "MISS":
        s[6].inc()
    if e.status in (402, 429) and e.error_code:
        AI_REFUSALS.labels(e.endpoint, e.error_code).inc()
    if CUSTOMER_LABEL and e.customer_id:
        requests, cost = _customer()
        requests.labels(e.customer_id, model).inc()
        if e.cost:
            cost.labels(e.customer_id, model).inc(e.cost)


def _customer() -> tuple[Counter, Counter]:
    global _customer_series
    if _customer_series is None:
        _customer_series = (
            Counter("tollway_ai_customer_requests_total", "AI requests per customer", ["customer", "model"]),
            Counter(
                "tollway_ai_customer_cost_micro_usd_total",
                "Micro-USD charged per customer",
                ["customer", "model"],
            ),
        )
    return _customer_series
