"""The Responses API's stored responses: each kept per customer for
:data:`RETENTION_DAYS` (as OpenAI keeps them), with the conversation's items
(input then output) for a later request's ``previous_response_id``. Another
customer's response, or an expired one, is not found; expired ones are
deleted by :func:`sweep`, which storing a response starts once an hour."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import not_found
from tollway.core.schema import responses
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.ledger.riders import Statement

RETENTION_DAYS = 30
_DAY_US = 86_400 * 1_000_000
SWEEP_EVERY_S = 3600.0
log = logging.getLogger("tollway.inference")
_last_sweep: float | None = None  # time.monotonic() of the last sweep started in this process
_sweeping: set[asyncio.Task[int]] = set()  # the running sweep (a reference, so it is not collected)
_SWEEP: Statement[tuple[int]] = Statement("DELETE FROM responses WHERE expires_at_us <= ?")


def _missing(rid: str, param: str | None) -> Exception:
    return not_found("response_not_found", f"no response {rid!r}", param)


_INSERT: Statement[tuple[str, str, int, int, str, str]] = Statement(
    "INSERT INTO responses (id, customer_id, created_at_us, expires_at_us, body, items)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


async def put(
    engine: AsyncEngine,
    clock: Clock,
    customer_id: str,
    body: dict[str, Any],
    items: list[dict[str, Any]],
    ledger: Ledger | None = None,
) -> None:
    """Keep a response. On SQLite it is written by the ledger's writer thread,
    between batches, in a lazy commit (it survives a crash of the process, not
    a power cut: a stored response is not money), so it neither waits for the
    database's lock nor for an fsync (docs/benchmarks.md, "API shapes")."""
    now = clock.now_us()
    row = (
        body["id"],
        customer_id,
        now,
        now + RETENTION_DAYS * _DAY_US,
        orjson.dumps(body).decode(),
        orjson.dumps(items).decode(),
    )
    _sweep_if_due(engine, clock, ledger)
    if ledger is not None and await ledger.write_aside(_INSERT, [row], lazy=True) is not None:
        return
    async with writer(engine).begin() as conn:
        await conn.execute(insert(responses).values(dict(zip(_COLUMNS, row, strict=True))))


async def sweep(engine: AsyncEngine, clock: Clock, ledger: Ledger | None = None) -> int:
    """Delete the expired responses (on SQLite, on the ledger's writer thread:
    one writer); how many were deleted."""
    now = clock.now_us()
    if ledger is not None:
        n = await ledger.write_aside(_SWEEP, [(now,)], lazy=True)
        if n is not None:
            return n
    async with writer(engine).begin() as conn:
        r = await conn.execute(delete(responses).where(responses.c.expires_at_us <= now))
    return int(r.rowcount or 0)


def _sweep_if_due(engine: AsyncEngine, clock: Clock, ledger: Ledger | None) -> None:
    """Start a sweep in the background if this process has not run one for an hour."""
    global _last_sweep
    if _last_sweep is not None and time.monotonic() - _last_sweep < SWEEP_EVERY_S:
        return
    _last_sweep = time.monotonic()
    task = asyncio.get_running_loop().create_task(
        sweep(engine, clock, ledger), name="tollway-responses-sweep"
    )
    _sweeping.add(task)
    task.add_done_callback(_swept)


def _swept(task: asyncio.Task[int]) -> None:
    _sweeping.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("expired responses could not be deleted: %s", task.exception())


_COLUMNS = ("id", "customer_id", "created_at_us", "expires_at_us", "body", "items")


async def _row(
    engine: AsyncEngine, clock: Clock, customer_id: str, rid: str, col: Any, param: str | None
) -> Any:
    q = select(col).where(
        responses.c.id == rid,
        responses.c.customer_id == customer_id,
        responses.c.expires_at_us > clock.now_us(),
    )
    async with engine.connect() as conn:
        v = (await conn.execute(q)).scalar_one_or_none()
    if v is None:
        raise _missing(rid, param)
    return orjson.loads(v)


async def items(engine: AsyncEngine, clock: Clock, customer_id: str, rid: str) -> list[dict[str, Any]]:
    """The conversation a stored response ends (a 404 naming ``previous_response_id``)."""
    out: list[dict[str, Any]] = await _row(
        engine, clock, customer_id, rid, responses.c["items"], "previous_response_id"
    )
    return out


async def get(engine: AsyncEngine, clock: Clock, customer_id: str, rid: str) -> dict[str, Any]:
    out: dict[str, Any] = await _row(engine, clock, customer_id, rid, responses.c.body, None)
    return out


async def remove(engine: AsyncEngine, clock: Clock, customer_id: str, rid: str) -> None:
    q = delete(responses).where(responses.c.id == rid, responses.c.customer_id == customer_id)
    async with writer(engine).begin() as conn:
        n = (await conn.execute(q)).rowcount
    if not n:
        raise _missing(rid, None)
