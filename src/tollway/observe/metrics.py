"""Prometheus metrics, registered once per process on the default registry."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from tollway.observe.plainseries import Counters, Histograms, cumulative

disable_created_metrics()  # type: ignore[no-untyped-call]

# The series counted on every request or ledger batch are plain numbers read at
# scrape time (observe/plainseries.py): the library's children lock per count.
LEDGER_BATCH_SIZE = Histograms(
    "tollway_ledger_batch_size",
    "Ledger requests committed per database transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
).labels()
LEDGER_COMMIT_SECONDS = Histograms(
    "tollway_ledger_commit_seconds",
    "Time to load, apply and commit one ledger batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
).labels()
LEDGER_OPS = Counters("tollway_ledger_requests_total", "Ledger requests by outcome", ["outcome"])
LEDGER_OPS_OK, LEDGER_OPS_REJECTED = LEDGER_OPS.labels("ok"), LEDGER_OPS.labels("rejected")
LEDGER_EXPIRED = Counter("tollway_ledger_expired_total", "Pending transfers voided by their timeout")
HTTP_REQUESTS = Counters("tollway_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histograms(
    "tollway_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
CHARGES = Counters("tollway_charges_total", "Charge-path holds by outcome", ["outcome"])
CHARGES_POSTED, CHARGES_FREE = CHARGES.labels("posted"), CHARGES.labels("free")
CHARGES_VOIDED, CHARGES_REFUSED = CHARGES.labels("voided"), CHARGES.labels("refused")
CHARGED_MICROS = Counters("tollway_charged_micro_usd_total", "Micro-USD posted by the charge path").labels()
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
# Kept as plain numbers and read by a collector at scrape time (AiSeries): the
# library's labelled children take a lock per increment, ~10 us per request for
# these seven series, against ~2 us here.
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# one (endpoint, model)'s numbers: input, output, cost, hits, misses, then each
# histogram's sum followed by its per-bucket counts (the last: above every bound)
_IN, _OUT, _COST, _HIT, _MISS, _LAT = 0, 1, 2, 3, 4, 5
_TTFT = _LAT + 1 + len(_SECONDS_BUCKETS) + 1


class AiSeries(PromCollector):
    """The AI request series, counted in plain numbers by the event loop and
    exposed as the counters and histograms they are."""

    def __init__(self) -> None:
        self.by_model: dict[tuple[str, str], list[float]] = {}
        self.requests: dict[tuple[str, str, str], int] = {}

    def observe(self, endpoint: str, model: str, status: int, e: AiRequest) -> None:
        key = (endpoint, model)
        s = self.by_model.get(key)
        if s is None:
            s = self.by_model[key] = [0.0] * (_TTFT + 1 + len(_TTFT_BUCKETS) + 1)
        skey = (endpoint, model, str(status))
        self.requests[skey] = self.requests.get(skey, 0) + 1
        s[_IN] += e.input_tokens
        s[_OUT] += e.output_tokens
        s[_COST] += e.cost
        seconds = e.latency_ms / 1000
        s[_LAT] += seconds
        s[_LAT + 1 + bisect_left(_SECONDS_BUCKETS, seconds)] += 1
        if e.cache == "HIT":
            s[_HIT] += 1
        else:
            if e.cache == "MISS":
                s[_MISS] += 1
            if e.ttft_ms is not None:
                ttft = e.ttft_ms / 1000
                s[_TTFT] += ttft
                s[_TTFT + 1 + bisect_left(_TTFT_BUCKETS, ttft)] += 1

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "model"]
        req = CounterMetricFamily(
            "tollway_ai_requests", "AI requests by endpoint, model and status", labels=[*labels, "status"]
        )
        for k, n in list(self.requests.items()):
            req.add_metric(list(k), n)
        fams = [
            CounterMetricFamily("tollway_ai_input_tokens", "Input tokens", labels=labels),
            CounterMetricFamily("tollway_ai_output_tokens", "Output tokens", labels=labels),
            CounterMetricFamily(
                "tollway_ai_cost_micro_usd", "Micro-USD charged for AI requests", labels=labels
            ),
        ]
        lat = HistogramMetricFamily(
            "tollway_ai_request_seconds",
            "AI request latency, start to end (a stream: to its last chunk)",
            labels=labels,
        )
        ttft = HistogramMetricFamily(
            "tollway_ai_time_to_first_token_seconds", "Time to the first token", labels=labels
        )
        cache = CounterMetricFamily(
            "tollway_ai_cache", "Response cache lookups by result", labels=[*labels, "result"]
        )
        for key, s in list(self.by_model.items()):
            s = list(s)
            for fam, i in zip(fams, (_IN, _OUT, _COST), strict=True):
                fam.add_metric(list(key), s[i])
            lat.add_metric(list(key), cumulative(_SECONDS_BUCKETS, s[_LAT + 1 : _TTFT]), s[_LAT])
            ttft.add_metric(list(key), cumulative(_TTFT_BUCKETS, s[_TTFT + 1 :]), s[_TTFT])
            cache.add_metric([*key, "HIT"], s[_HIT])
            cache.add_metric([*key, "MISS"], s[_MISS])
        yield from (req, *fams, lat, ttft, cache)


AI_SERIES = AiSeries()
REGISTRY.register(AI_SERIES)
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


def record_ai(e: AiRequest) -> None:
    """Count one AI request (its row in the request log)."""
    model = e.model if e.model and (e.deployment or e.cache == "HIT") else "-"
    AI_SERIES.observe(e.endpoint, model, e.status, e)
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
