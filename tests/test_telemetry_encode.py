"""observe/otlp_encode.py writes OTLP's ExportTraceServiceRequest by hand: the
official protobuf classes must parse it into the very message the official
encoder builds from the same spans (hypothesis over names, kinds, parents,
trace states, statuses, events and attribute values of every kind)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tollway.observe import otlp_encode, span_export
from tollway.observe.spans import readable

_I64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(max_size=12)
_SCALAR = st.one_of(_TEXT, st.booleans(), _I64, st.floats(allow_nan=False), st.binary(max_size=8))
_ARRAYS = st.one_of(
    st.lists(_TEXT, max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.lists(_I64, max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
)
_ATTRS = st.dictionaries(st.text(min_size=1, max_size=10), st.one_of(_SCALAR, _ARRAYS), max_size=6)
_ID64 = st.integers(1, 2**64 - 1)
_RECORD = st.tuples(
    _TEXT,  # name
    st.integers(0, 4),  # kind
    st.integers(1, 2**128 - 1),  # trace id
    _ID64,  # span id
    st.one_of(st.just(0), _ID64),  # parent
    st.booleans(),  # parent is remote
    st.sampled_from(["", "vendor=abc", "a=1,b=2"]),  # trace state
    st.integers(0, 2**63),  # start
    st.integers(0, 2**63),  # end
    _ATTRS,
    st.integers(0, 2),  # status code
    st.one_of(st.none(), _TEXT),  # status description
    st.lists(st.tuples(_TEXT, st.integers(0, 2**63), _ATTRS), max_size=2),  # events
)


def _official(records: list[Any], res: Any, sc: Any) -> ExportTraceServiceRequest:
    return encode_spans([readable(r, res, sc) for r in records])


@settings(max_examples=150, deadline=None)
@given(st.lists(_RECORD, min_size=1, max_size=5))
def test_the_hand_encoding_parses_into_the_official_message(records: list[Any]) -> None:
    res, sc = span_export.resource("svc"), span_export.scope()
    records = [(*r[:11], r[11] if r[10] == 2 else None, r[12]) for r in records]  # a description: errors only
    mine = otlp_encode.request(
        records,
        _encode_resource(res).SerializeToString(),
        _encode_instrumentation_scope(sc).SerializeToString(),
    )
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(mine)
    assert parsed == _official(records, res, sc)


def test_values_the_sdk_would_drop_are_dropped_and_the_rest_kept() -> None:
    attrs = {
        "ok": "x",
        "none": None,
        "mixed": ("a", 1),
        "nested": (("a",),),
        "dict": {"a": 1},
        "huge": 2**70,
        "surrogate": "hi \ud800",
        "with_none": ("a", None),
    }
    rec = ("s", 0, 1, 2, 0, False, "", 1, 2, attrs, 0, None, [])
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(otlp_encode.request([rec], b"", b""))
    [span] = parsed.resource_spans[0].scope_spans[0].spans
    got = {a.key: a.value for a in span.attributes}
    assert set(got) == {"ok", "surrogate", "with_none"}
    assert got["surrogate"].string_value == "hi \ufffd"
    assert [v.WhichOneof("value") for v in got["with_none"].array_value.values] == ["string_value", None]


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**63 - 1, -1, -(2**63)])
def test_varints_round_trip_through_protobuf(n: int) -> None:
    rec = ("s", 0, 1, 2, 0, False, "", 1, 2, {"n": n}, 0, None, [])
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(otlp_encode.request([rec], b"", b""))
    assert parsed.resource_spans[0].scope_spans[0].spans[0].attributes[0].value.int_value == n


def test_repeated_values_are_encoded_from_the_cache_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values equal in Python but not on the wire (True, 1, 1.0, "1"; 0.0 and -0.0)
    stay distinct; a cache emptied when full (here after 3 entries) encodes the same
    bytes cold and warm."""
    monkeypatch.setattr(otlp_encode, "_KV_MAX", 3)
    monkeypatch.setattr(otlp_encode, "_KV", {})
    values = [True, 1, 1.0, "1", 0.0, -0.0, ("stop",), ("stop", "length"), 2**70, "req_" + "a" * 24]
    recs = [
        ("s", 1, 1, i + 1, 0, False, "", 1, 2, {"v": v, "w": "same"}, 0, None, [])
        for i, v in enumerate(values)
    ]
    cold = otlp_encode.request(recs, b"", b"")
    assert otlp_encode.request(recs, b"", b"") == cold  # warm
    parsed = ExportTraceServiceRequest()
    parsed.ParseFromString(cold)
    res, sc = span_export.resource("svc"), span_export.scope()
    official = _official(recs, res, sc).resource_spans[0].scope_spans[0].spans
    mine = parsed.resource_spans[0].scope_spans[0].spans
    assert [list(s.attributes) for s in mine] == [list(s.attributes) for s in official]
    kinds = [s.attributes[0].value.WhichOneof("value") for s in mine[:4]]
    assert kinds == ["bool_value", "int_value", "double_value", "string_value"]
    assert str(mine[5].attributes[0].value.double_value) == "-0.0"
