"""Span records (``spans.Record``) as an OTLP ``ExportTraceServiceRequest``, in
protobuf's wire format, written directly.

The official encoder (``opentelemetry-exporter-otlp-proto-common``) builds a
protobuf message object per span, attribute and value: with the
``ReadableSpan`` it takes, ~51 µs a span here, the largest part of what
tracing costs the machine. This writes the same message in ~12 µs
(``bench/spans.py``, ``docs/benchmarks.md`` "Telemetry"); the resource and the
instrumentation scope are encoded once, by the official encoder. A property
test checks that the official protobuf classes parse what this writes into
the message the official encoder builds from the same spans.

Attribute values follow the SDK's rules: ``str``, ``bool``, ``int`` (64-bit),
``float``, ``bytes`` and homogeneous sequences of them; anything else is
dropped, as the SDK drops it. Strings are UTF-8 (a lone surrogate becomes
U+FFFD rather than failing the batch).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from tollway.observe.spans import Record

_D = struct.Struct("<d")
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_I64 = (-(2**63), 2**63 - 1)
# Span.flags: the parent's is_remote is known (and, with the second bit, true)
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_SCALARS = (str, bool, int, float, bytes)


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` already encoded)."""
    return tag + _varint(len(payload)) + payload


def _utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:  # lone surrogates: U+FFFD each
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s).encode()


# tags: (field number << 3) | wire type
_T_STR, _T_BOOL, _T_INT, _T_DBL, _T_ARR, _T_BYTES = b"\x0a", b"\x10", b"\x18", b"\x21", b"\x2a", b"\x3a"


def _value(v: Any) -> bytes | None:
    """An AnyValue's payload, or None if the SDK would not keep ``v``."""
    if isinstance(v, str):
        return _ld(_T_STR, _utf8(v))
    if isinstance(v, bool):
        return _T_BOOL + (b"\x01" if v else b"\x00")
    if isinstance(v, int):
        return _T_INT + _varint(v) if _I64[0] <= v <= _I64[1] else None
    if isinstance(v, float):
        return _T_DBL + _D.pack(v)
    if isinstance(v, bytes):
        return _ld(_T_BYTES, v)
    if isinstance(v, list | tuple):
        kinds = {bool if isinstance(x, bool) else type(x) for x in v if x is not None}
        if len(kinds) > 1 or not kinds <= set(_SCALARS):
            return None  # mixed or nested: the SDK drops the attribute
        items = [b"" if x is None else _value(x) for x in v]
        if any(i is None for i in items):
            return None
        return _ld(_T_ARR, b"".join(_ld(b"\x0a", i) for i in items if i is not None))
    return None


_KEYS: dict[str, bytes] = {}  # attribute keys (names in the code), encoded once
# Whole KeyValues (length-prefixed) of the values that repeat (a model's name, a route,
# a status, token counts): most of a span's attributes, encoded once. Keyed by the
# value's type too (True and 1 are equal in Python, not on the wire); floats are not
# kept (-0.0 equals 0.0). Emptied when full: unique values (request ids) then only
# cost the refill.
_KV: dict[tuple[str, Any, type], bytes] = {}
_KV_MAX = 4096
_CACHED = (str, int, bool)


def _key(k: str) -> bytes:
    b = _KEYS.get(k)
    if b is None:
        b = _ld(b"\x0a", _utf8(k))
        if len(_KEYS) < 4096:
            _KEYS[k] = b
    return b


def _kv(k: str, v: Any) -> bytes:
    """A KeyValue with its length prefix (b"" if the SDK would drop the value)."""
    p = _value(v)
    if p is None:
        return b""
    kv = _key(k) + b"\x12" + _varint(len(p)) + p
    return _varint(len(kv)) + kv


def attributes(tag: bytes, attrs: dict[str, Any]) -> bytes:
    """Repeated KeyValue fields (``tag``: the field's)."""
    out = []
    cache = _KV
    for k, v in attrs.items():
        t = type(v)
        if t in _CACHED or (t is tuple and all(type(x) is str for x in v)):
            ck = (k, v, t)
            kv = cache.get(ck)
            if kv is None:
                kv = _kv(k, v)
                if len(cache) >= _KV_MAX:
                    cache.clear()
                cache[ck] = kv
        else:
            kv = _kv(k, v)
        if kv:
            out.append(tag + kv)
    return b"".join(out)


_NAMES: dict[str, bytes] = {}  # span names (field 5, length-prefixed), encoded once
_KIND = [b"\x30" + bytes((k + 1,)) for k in range(5)]  # 6 kind (the SDK's INTERNAL is 0, OTLP's 1)
_TIMES = struct.Struct("<BQBQ")  # 7 start_time_unix_nano, 8 end_time_unix_nano
_OK = b"\x7a\x00"  # 15 status, unset and without a message
_FLAGS = {
    remote: b"\x85\x01" + _I.pack(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0)) for remote in (False, True)
}


def _name(name: str) -> bytes:
    b = _NAMES.get(name)
    if b is None:
        b = _ld(b"\x2a", _utf8(name))
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        _NAMES[name] = b
    return b


def span(rec: Sequence[Any]) -> bytes:
    """One ``Span`` message."""
    name, kind, tid, sid, pid, remote, state, start, end, attrs, code, desc, events = rec
    out = [
        b"\x0a\x10" + tid.to_bytes(16, "big") + b"\x12\x08" + sid.to_bytes(8, "big")
    ]  # 1 trace_id, 2 span_id
    if state:
        out.append(_ld(b"\x1a", _utf8(state)))  # 3 trace_state
    if pid:
        out.append(b"\x22\x08" + pid.to_bytes(8, "big"))  # 4 parent_span_id
    if name:
        out.append(_name(name))  # 5 name
    out.append(_KIND[kind] if 0 <= kind < 5 else b"\x30" + _varint(kind + 1))
    out.append(_TIMES.pack(0x39, start, 0x41, end))  # 7, 8
    out.append(attributes(b"\x4a", attrs))  # 9 attributes
    for ename, ts, eattrs in events:  # 11 events: time (1), name (2), attributes (3)
        body = b"\x09" + _Q.pack(ts) + (_ld(b"\x12", _utf8(ename)) if ename else b"")
        out.append(_ld(b"\x5a", body + attributes(b"\x1a", eattrs)))
    if code or desc:
        status = (_ld(b"\x12", _utf8(desc)) if desc else b"") + (b"\x18" + _varint(code) if code else b"")
        out.append(_ld(b"\x7a", status))  # 15 status: message (2), code (3)
    else:
        out.append(_OK)
    out.append(_FLAGS[bool(pid and remote)])  # 16 flags
    return b"".join(out)


def request(records: Sequence[Record], resource: bytes, scope: bytes) -> bytes:
    """An ``ExportTraceServiceRequest``: one resource, one scope (each an
    encoded message: ``Resource``, ``InstrumentationScope``), the spans."""
    spans = b"".join(_ld(b"\x12", span(r)) for r in records)  # ScopeSpans.spans (2)
    scope_spans = _ld(b"\x0a", scope) + spans  # ScopeSpans.scope (1)
    resource_spans = _ld(b"\x0a", resource) + _ld(b"\x12", scope_spans)
    return _ld(b"\x0a", resource_spans)  # ExportTraceServiceRequest.resource_spans (1)
