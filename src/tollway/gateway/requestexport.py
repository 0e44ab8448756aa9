"""The request log, exported: JSONL or CSV, streamed page by page (newest
first), with the same filters as ``/admin/requests``; used by
``GET /admin/requests/export`` and ``tollway requests export``."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tollway.core.errors import invalid
from tollway.gateway.requestlog import COLUMNS, RequestLog

FORMATS = ("jsonl", "csv")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
_PAGE = 1000
_JSONL = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS  # (column names are str subclasses)
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MAX_TAGS = 16
_MAX_TAG_VALUE = 512


def parse_tags(pairs: list[str] | None, param: str = "tag") -> dict[str, str]:
    """``["env=prod", "team=a"]`` → ``{"env": "prod", "team": "a"}``; a malformed pair is a 400."""
    tags: dict[str, str] = {}
    for pair in pairs or []:
        name, eq, value = pair.partition("=")
        if not eq or not _TAG_KEY.match(name) or len(value) > _MAX_TAG_VALUE:
            raise invalid(
                "invalid_tag",
                f"a tag filter is key=value (key: 1-64 of A-Za-z0-9_.:-, value: at most "
                f"{_MAX_TAG_VALUE} characters): {pair[:80]!r}",
                param,
            )
        tags[name] = value
    if len(tags) > _MAX_TAGS:
        raise invalid("too_many_tags", f"at most {_MAX_TAGS} tag filters", param)
    return tags


async def rows(log: RequestLog, limit: int | None = None, **filters: Any) -> AsyncIterator[dict[str, Any]]:
    """Every row that matches, newest first (at most ``limit``), a page at a time."""
    await log.flush()
    before: str | None = None
    left = limit
    while left is None or left > 0:
        page = await log.query(limit=_PAGE if left is None else min(_PAGE, left), before=before, **filters)
        for r in page:
            r.pop("object", None)
            yield r
        if len(page) < _PAGE or (left is not None and (left := left - len(page)) <= 0):
            return
        before = page[-1]["id"]


async def export(log: RequestLog, fmt: str, limit: int | None = None, **filters: Any) -> AsyncIterator[bytes]:
    """The rows as JSONL (one object a line) or CSV (a header row, then one row each)."""
    if fmt not in FORMATS:
        raise invalid("invalid_format", "format is jsonl or csv", "format")
    if fmt == "csv":
        yield _csv_line(COLUMNS)
    async for r in rows(log, limit, **filters):
        if fmt == "jsonl":
            yield orjson.dumps(r, option=_JSONL)
        else:
            yield _csv_line(["" if r[c] is None else r[c] for c in COLUMNS])


def _csv_line(values: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode()
