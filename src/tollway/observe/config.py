"""The ``[telemetry]`` section: traces, OTLP metrics, JSON logs, label opt-ins.

Everything is off by default. The standard OpenTelemetry variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_EXPORTER``, ``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER`` and ``_ARG``) turn traces on as well; see
``docs/observability.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tollway.core.config import Section


class TelemetryConfig(Section):
    # Traces over OTLP/HTTP: on when true, or when the OTEL_* variables ask for them.
    traces: bool = False
    # The collector's base URL (OTLP/HTTP, e.g. "http://127.0.0.1:4318"); empty:
    # OTEL_EXPORTER_OTLP_ENDPOINT, or the SDK's default.
    otlp_endpoint: str = ""
    # The OpenTelemetry GenAI metrics (gen_ai.client.*) over OTLP too.
    otlp_metrics: bool = False
    service_name: str = "tollway"  # OTEL_SERVICE_NAME wins
    # 0.0 .. 1.0: the share of new traces sampled (parent-based: a sampled
    # incoming traceparent is always followed). OTEL_TRACES_SAMPLER(_ARG) win.
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    # "text" (the default) or "json": one JSON object per line (TOLLWAY_LOG_FORMAT too).
    log_format: Literal["text", "json"] = "text"
    # One access log line per request: "auto" is on with JSON logs.
    access_log: Literal["auto", "on", "off"] = "auto"
    # Prometheus: also label the AI series by customer (unbounded: opt in).
    metrics_customer_label: bool = False
