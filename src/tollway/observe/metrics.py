"""Prometheus metrics, registered once per process on the default registry."""

from __future__ import annotations

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
