"""What a traced chat request's spans cost, piece by piece, in one process (A/B
side by side, medians of --repeat runs):

- starting and ending its server and model-call spans with tollway's spans
  (observe/spans.py) against the OpenTelemetry SDK's TracerProvider;
- encoding them for OTLP with observe/otlp_encode.py against a ReadableSpan
  plus the official encoder (what the SDK's exporter does).

    .venv/bin/python bench/spans.py [--requests 2000] [--repeat 5]

Writes bench/results/spans.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, use_span

from common import machine
from tollway.observe import otlp_encode, span_export
from tollway.observe.spans import Recorder, readable

RESULTS = Path(__file__).resolve().parent / "results" / "spans.json"
SERVER = {
    "http.request.method": "POST",
    "url.path": "/v1/chat/completions",
}
CALL = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "mock"}
END = {
    "gen_ai.provider.name": "openai",
    "gen_ai.response.model": "mock",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 8,
    "gen_ai.response.finish_reasons": ("stop",),
    "tollway.charge_micros": 40,
    "tollway.attempts": 1,
}


def request(start: Any, i: int) -> None:
    """One chat request's two spans, as the server makes them (each request its own id)."""
    s = start("POST", SpanKind.SERVER, {**SERVER, "tollway.request_id": f"req_{i:024x}"})
    with use_span(s, end_on_exit=False):
        g = start("chat mock", SpanKind.CLIENT, CALL)
        g.set_attributes(END)
        g.end()
    s.set_attributes({"http.route": "/v1/chat/completions", "http.response.status_code": 200})
    s.update_name("POST /v1/chat/completions")
    s.end()


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def timed(fn: Any, n: int) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    records: list[Any] = []
    lean = Recorder(sampling.ParentBased(sampling.ALWAYS_ON), records.append)
    kept = Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("tollway")

    def lean_start(name: str, kind: SpanKind, attrs: dict[str, Any]) -> Any:
        return lean.start(name, kind.name.lower(), attributes=attrs)

    def sdk_start(name: str, kind: SpanKind, attrs: dict[str, Any]) -> Any:
        return tracer.start_span(name, kind=kind, attributes=attrs)

    res, scope = span_export.resource("tollway"), span_export.scope()
    res_pb = _encode_resource(res).SerializeToString()
    scope_pb = _encode_instrumentation_scope(scope).SerializeToString()
    n = a.requests
    got: dict[str, list[float]] = {k: [] for k in ("spans_lean", "spans_sdk", "encode_lean", "encode_sdk")}
    for _ in range(a.repeat):  # the two sides alternate
        records.clear()
        kept.spans.clear()
        got["spans_lean"].append(timed(lambda: [request(lean_start, i) for i in range(n)], n))
        got["spans_sdk"].append(timed(lambda: [request(sdk_start, i) for i in range(n)], n))
        got["encode_lean"].append(timed(lambda: otlp_encode.request(records, res_pb, scope_pb), len(records)))
        got["encode_sdk"].append(
            timed(
                lambda: encode_spans([readable(r, res, scope) for r in records]).SerializePartialToString(),
                len(records),
            )
        )
    med = {k: round(statistics.median(v), 2) for k, v in got.items()}
    out = {
        "command": f"python bench/spans.py --requests {n} --repeat {a.repeat}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "units": "spans_*: µs per request (two spans); encode_*: µs per span",
        "median": med,
        "runs": got,
        "ratios": {
            "spans_sdk_over_lean": round(med["spans_sdk"] / med["spans_lean"], 2),
            "encode_sdk_over_lean": round(med["encode_sdk"] / med["encode_lean"], 2),
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"median": med, "ratios": out["ratios"]}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
