"""Every JSON body tollway reads, parsed one way.

Request bodies (the fast AI routes, every FastAPI route, the routes that read
their body themselves) and upstream models' answers go through :func:`loads`:

- orjson, strict: a lone surrogate (``"\\ud800"``), invalid UTF-8, ``NaN`` or
  trailing data is not JSON;
- at most :data:`MAX_DEPTH` levels of arrays and objects, so no recursion
  downstream (pydantic, the grammar compiler, SQL JSON columns) meets a body
  nested thousands deep;
- integers within signed 64 bits, what every database column and the ledger
  hold (a larger one used to reach SQLite or asyncpg and fail there).

:func:`body` is the same for a request: it raises the API's ``400``
(``invalid_json``, ``json_too_deep`` or ``integer_out_of_range``), which
changes nothing. Both checks walk the parsed value only when the raw text
could fail them (enough brackets; a run of 19 digits), counted in C.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tollway.core.errors import invalid

MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# 2**63 has 19 digits: shorter integers always fit. A run of 19 is looked for in a copy
# with every digit made "0" and everything else " " (bytes.translate, then a substring
# search, both in C): ~5x faster than the regex [0-9]{19} on a chat body, 13x on 10 KB.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_RUN = b"0" * 19
_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"
_BIG = "JSON with an integer outside signed 64 bits"


class BadJson(ValueError):
    """Not JSON tollway accepts: ``code`` is ``invalid_json``, ``json_too_deep``
    or ``integer_out_of_range``; ``param`` is the path to the integer."""

    def __init__(self, code: str, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = ".".join(str(p) for p in path) or None  # where, when known


def loads(raw: bytes | bytearray | str) -> Any:
    """Parse JSON, refusing what :mod:`tollway.core.jsonparse` describes."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "depth limit" in e.msg:  # orjson's own limit (1024): past ours anyway
            raise BadJson("json_too_deep", _DEEP) from None
        if "number" in e.msg and _long(raw):  # an integer too long even for a double
            raise BadJson("integer_out_of_range", _BIG) from None
        raise BadJson("invalid_json", f"not valid JSON ({e.msg})") from None
    if _containers(raw) > MAX_DEPTH:
        _check(obj)
    if _long(raw):
        # orjson reads an integer past 64 bits as a float: read it exactly, then refuse it.
        try:
            obj = json.loads(raw)
        except ValueError:  # over int's 4,300 digits
            raise BadJson("integer_out_of_range", _BIG) from None
        _check(obj)
    return obj


def body(raw: bytes | bytearray | str, param: str | None = None) -> Any:
    """A request body's JSON, or the API's ``400`` in the one error shape."""
    try:
        return loads(raw)
    except BadJson as e:
        what = "request body" if param in (None, "body") else param
        where = f" (at {e.param})" if e.param else ""
        raise invalid(e.code, f"the {what} is {e.message}{where}", e.param or param) from None


def _long(raw: bytes | bytearray | str) -> bool:
    if isinstance(raw, str):  # UTF-8 keeps ASCII digits and puts no other byte in 0x30-0x39
        raw = raw.encode("utf-8", "surrogatepass")
    return _RUN in raw.translate(_DIGITS)


def _containers(raw: bytes | bytearray | str) -> int:
    """How many arrays and objects open in ``raw`` at most (counted in C): the
    depth walk runs only when a body could be deep at all."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def _check(obj: Any) -> None:
    """Refuse a value nested deeper than MAX_DEPTH or holding an integer past
    64 bits (iterative: a deep value cannot exhaust the stack here)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(obj, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, int) and not isinstance(node, bool):
            if not INT_MIN <= node <= INT_MAX:
                raise BadJson("integer_out_of_range", _BIG, path)
            continue
        if not isinstance(node, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            raise BadJson("json_too_deep", _DEEP)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, child in items:
            if isinstance(child, int | dict | list):
                stack.append((child, (*path, k)))
