"""Metadata filters: ``{"genre": "drama", "year": {"$gte": 2000}, "a.b": {"$in": [1, 2]}}``.

Keys are ANDed; a dotted key reaches into nested objects; each value is a
scalar (``$eq``) or an object of operators. A filter is validated once
(:func:`parse`) into a list of :class:`Cond`, evaluated in Python by
:func:`matches` (the embedded backend) or rendered as SQL by the pgvector
backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tollway.core.errors import invalid

MAX_FILTER_BYTES = 2048
OPS = ("$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte")
Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Cond:
    path: tuple[str, ...]
    op: str
    value: Any  # a scalar, or a list of scalars for $in / $nin


def _scalar(v: Any, param: str) -> Scalar:
    if v is None or isinstance(v, str | bool | int | float):
        return v
    raise invalid("invalid_filter", "filter values are strings, numbers, booleans or null", param)


def parse(flt: Any, param: str = "filter") -> list[Cond]:
    if flt is None:
        return []
    if not isinstance(flt, dict):
        raise invalid("invalid_filter", "filter is an object of metadata keys", param)
    if len(orjson.dumps(flt)) > MAX_FILTER_BYTES:
        raise invalid("filter_too_large", f"filter is over {MAX_FILTER_BYTES} bytes of JSON", param)
    out: list[Cond] = []
    for key, spec in flt.items():
        if not key or key.startswith("$") or any(not p for p in key.split(".")):
            raise invalid("invalid_filter", f"invalid filter key {key!r}", f"{param}.{key}")
        path = tuple(key.split("."))
        if not isinstance(spec, dict):
            out.append(Cond(path, "$eq", _scalar(spec, f"{param}.{key}")))
            continue
        if not spec:
            raise invalid("invalid_filter", f"empty operator object for {key!r}", f"{param}.{key}")
        for op, v in spec.items():
            p = f"{param}.{key}.{op}"
            if op not in OPS:
                raise invalid("unknown_filter_operator", f"unknown operator {op!r}: use {', '.join(OPS)}", p)
            if op in ("$in", "$nin"):
                if not isinstance(v, list) or not v:
                    raise invalid("invalid_filter", f"{op} takes a non-empty list", p)
                out.append(Cond(path, op, [_scalar(x, p) for x in v]))
            elif op in ("$lt", "$lte", "$gt", "$gte"):
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    raise invalid("invalid_filter", f"{op} takes a number or a string", p)
                out.append(Cond(path, op, v))
            else:
                out.append(Cond(path, op, _scalar(v, p)))
    return out


_MISSING = object()


def lookup(meta: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = meta
    for p in path:
        if not isinstance(cur, dict):
            return _MISSING
        cur = cur.get(p, _MISSING)
        if cur is _MISSING:
            return _MISSING
    return cur


def _eq(a: Any, b: Any) -> bool:
    # 1 == True in Python; not in JSON
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _cmp(a: Any, op: str, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, bool) or not (
        (isinstance(a, num) and isinstance(b, num)) or (isinstance(a, str) and isinstance(b, str))
    ):
        return False
    x: Any = a
    y: Any = b
    if op == "$lt":
        return bool(x < y)
    if op == "$lte":
        return bool(x <= y)
    if op == "$gt":
        return bool(x > y)
    return bool(x >= y)


def test(c: Cond, v: Any) -> bool:
    if c.op == "$eq":
        return v is not _MISSING and _eq(v, c.value)
    if c.op == "$ne":
        return v is _MISSING or not _eq(v, c.value)
    if c.op == "$in":
        return v is not _MISSING and any(_eq(v, x) for x in c.value)
    if c.op == "$nin":
        return v is _MISSING or not any(_eq(v, x) for x in c.value)
    return v is not _MISSING and _cmp(v, c.op, c.value)


def matches(conds: list[Cond], meta: dict[str, Any] | None) -> bool:
    return all(test(c, lookup(meta, c.path)) for c in conds)
