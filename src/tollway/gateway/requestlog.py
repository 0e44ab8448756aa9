"""The request log: one row per AI request, written in batches off the hot path.

:meth:`RequestLog.record` only appends to a buffer; a background task writes
the buffer every ``log_flush_ms`` in one transaction, and prunes rows older
than ``log_retention_days``.  Closing the log flushes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import time
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, cast, delete, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.ids import new_id
from tollway.core.schema import request_log as R
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.rawsql import raw_transaction
from tollway.ledger.riders import Statement
from tollway.observe import metrics
from tollway.observe.context import trace_id

log = logging.getLogger("tollway.gateway")

_PRUNE_EVERY_S = 600


@dataclass(slots=True)
class Entry:
    """Filled in as the request goes; written when it ends."""

    endpoint: str
    key_id: str | None = None
    customer_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    status: int = 200
    error_code: str | None = None
    stream: bool = False
    cache: str | None = None  # HIT | MISS | BYPASS
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    mneurons: int = 0
    cost: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    downgraded_from: str | None = None
    end_user: str | None = None  # the request's `user` (the customer's own end user)
    tags: str | None = None  # the request's `metadata`, as JSON
    trace_id: str | None = None  # the request's trace (tollway.observe.context)
    id: str = ""
    created_at_us: int = 0
    t0: float = 0.0  # perf_counter at the start (not stored)
    recorded: bool = False  # written (or queued): record() takes each entry once (not stored)


_FIELDS = [f.name for f in fields(Entry) if f.name not in ("t0", "recorded")]
# The entries opened while one HTTP request is served (set by
# tollway.api.requestlog.LogEveryRequest): what it must still record when the
# request ends without its handler having done so (an unexpected error).
OPEN: ContextVar[list[Entry] | None] = ContextVar("tollway_request_log_open", default=None)
COLUMNS = [c.name for c in R.columns]  # the columns, in order (the export's)
_PRUNE: Statement[tuple[int]] = Statement("DELETE FROM request_log WHERE created_at_us < ?")
assert sorted(_FIELDS) == sorted(COLUMNS), "request_log columns and Entry fields differ"
_VALUES = operator.attrgetter(*COLUMNS)  # an entry's row, in one C call
_BOOLS = [i for i, c in enumerate(COLUMNS) if {f.name: f.type for f in fields(Entry)}[c] == "bool"]


class RequestLog:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        flush_ms: int,
        retention_days: int,
        ledger: Ledger | None = None,
    ) -> None:
        self.engine = engine
        self.ledger = ledger  # SQLite: write on its writer thread (one writer per database)
        self.clock = clock
        self.flush_s = flush_ms / 1000
        self.retention_days = retention_days
        self._buf: list[Entry] = []
        self._riding: list[tuple[Any, ...]] = []  # rows waiting to ride with a ledger batch
        self._hand: asyncio.TimerHandle | None = None  # when they go
        self._task: asyncio.Task[None] | None = None
        self._last_prune: float | None = None  # never yet (monotonic time may start near 0)
        # One flush at a time: a flush that finds the buffer empty while another is still
        # writing the rows it took waits for them (GET /admin/requests lists what was served).
        self._flushing = asyncio.Lock()
        cols = ", ".join(COLUMNS)
        self._insert: Statement[tuple[Any, ...]] = Statement(
            f"INSERT INTO request_log ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})"
        )

    def start(self, endpoint: str) -> Entry:
        e = Entry(
            endpoint,
            trace_id=trace_id(),
            id=new_id("req"),
            created_at_us=self.clock.now_us(),
            t0=time.perf_counter(),
        )
        opened = OPEN.get()
        if opened is not None:
            opened.append(e)
        return e

    def record(self, e: Entry) -> None:
        if e.recorded:
            return
        e.recorded = True
        e.latency_ms = round((time.perf_counter() - e.t0) * 1000)
        metrics.record_ai(e)  # the per-endpoint, per-model Prometheus series
        if self.ledger is not None and self.ledger.can_ride(self._insert):
            # SQLite: rows gather for flush_ms, then ride with the ledger's next
            # batch (no commit of their own). One batch's worth of request-log
            # pages, not one per commit: with its four indexes a row dirtied
            # five pages of every commit at concurrency 1.
            self._riding.append(self._row(e))
            if self._hand is None:
                self._hand = asyncio.get_running_loop().call_later(self.flush_s, self._hand_over)
            if self.retention_days and self._prune_due() and (self._task is None or self._task.done()):
                self._task = asyncio.get_running_loop().create_task(self.flush(), name="tollway-log-prune")
            return
        self._buf.append(e)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tollway-request-log")

    def _hand_over(self) -> None:
        """Give the gathered rows to the ledger's next batch."""
        if self._hand is not None:
            self._hand.cancel()
            self._hand = None
        rows, self._riding = self._riding, []
        if rows:
            assert self.ledger is not None
            self.ledger.ride(self._insert, rows)

    @staticmethod
    def _row(e: Entry) -> tuple[Any, ...]:
        row: tuple[Any, ...] = _VALUES(e)
        if not _BOOLS:
            return row
        values = list(row)
        for i in _BOOLS:  # the driver's integer columns take 0 and 1
            values[i] = int(values[i])
        return tuple(values)

    def _prune_due(self) -> bool:
        return self._last_prune is None or time.monotonic() - self._last_prune > _PRUNE_EVERY_S

    async def _run(self) -> None:
        while self._buf:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # keep the rows for the next try
                log.exception("request log write failed")
        # idle: the task ends and record() starts a new one

    async def flush(self) -> None:
        """Write what is buffered (and wait for rows riding with the ledger, and for
        a flush in progress)."""
        async with self._flushing:
            self._hand_over()
            rows, self._buf = self._buf, []
            if rows:
                try:
                    await self._write(rows)
                except BaseException:
                    self._buf[:0] = rows
                    raise
            if self.ledger is not None:
                await self.ledger.riders_committed()
            if self.retention_days and self._prune_due():
                self._last_prune = time.monotonic()
                await self.prune()

    async def _write(self, rows: list[Entry]) -> None:
        data = [self._row(e) for e in rows]
        async with raw_transaction(self.engine) as tx:
            await tx.executemany(self._insert.sql if tx.sqlite else self._insert.pg_sql, data)

    async def prune(self) -> int:
        cutoff = self.clock.now_us() - self.retention_days * 86_400_000_000
        if self.ledger is not None:
            n = await self.ledger.write_aside(_PRUNE, [(cutoff,)])
            if n is not None:
                return n
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(delete(R).where(R.c.created_at_us < cutoff))
        return int(r.rowcount or 0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def query(
        self,
        *,
        limit: int = 50,
        before: str | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the last id of the previous page.
        Filters: key_id, customer_id, model, status, cache, end_user, trace_id,
        since_us, until_us, and tags (a dict: every ``metadata`` key equal to its value)."""
        conds = []
        for k in ("key_id", "customer_id", "model", "status", "cache", "end_user", "trace_id"):
            if filters.get(k) is not None:
                conds.append(R.c[k] == filters[k])
        if filters.get("since_us") is not None:
            conds.append(R.c.created_at_us >= filters["since_us"])
        if filters.get("until_us") is not None:
            conds.append(R.c.created_at_us < filters["until_us"])
        for name, value in (filters.get("tags") or {}).items():
            conds.append(self._tag(name) == value)
        if before is not None:
            conds.append(R.c.id < before)
        q = select(R).order_by(R.c.id.desc()).limit(limit)
        if conds:
            q = q.where(and_(*conds))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [{**dict(r), "stream": bool(r["stream"]), "object": "request"} for r in rows]

    def _tag(self, name: str) -> Any:
        """``metadata[name]`` as text, in SQL (the tags column holds a JSON object)."""
        if self.engine.dialect.name == "postgresql":
            return cast(R.c.tags, JSONB)[name].astext
        return func.json_extract(R.c.tags, "$." + json.dumps(name))
