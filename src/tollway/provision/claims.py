"""Idempotency claims: a purchase's key is claimed before any money is held.

The first call with a key inserts the claim row (wallet, key) with the
fingerprint of its request (``sha256`` of the canonical JSON of everything
that shapes the purchase) and does the work; the unique row makes this atomic
across processes, on SQLite and PostgreSQL. Every other call with the key:

- with another fingerprint: 409 ``idempotency_key_reused``, nothing changes;
- while the work runs: waits for its outcome (woken at once in the same
  process, polling the row across processes), up to ``wait_s``, then 409
  ``idempotency_in_progress`` (retry later: the outcome will be there);
- once it is done: the same answer, or the same error.

Outcomes: an answer is recorded (``done``) and replayed; a refusal or failure
raised as a :class:`TollwayError` (declined, deploy failed, name taken) is
recorded (``failed``) and replayed, as the wallet's authorization under the
same key is final too; a purchase waiting for a human's approval is recorded
``pending`` and the next call with the key takes the claim over (it goes on
once approved); anything else (a crash, a bug, a cancellation) releases the
claim. A claim whose process died while running is taken over once its lease
(``lease_s``) has run out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError, conflict
from tollway.core.ids import new_id
from tollway.core.schema import provision_claims as C
from tollway.core.storage import writer


def fingerprint(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Outcome(Exception):
    """Raised by the work to record an answer other than a plain result: ``status``
    ``pending`` (the next call takes the claim over) with ``response`` to return."""

    def __init__(self, status: str, response: dict[str, Any], error: BaseException) -> None:
        super().__init__(status)
        self.status, self.response, self.error = status, response, error


def _error(d: dict[str, Any]) -> TollwayError:
    e = d["error"]
    return TollwayError(e["type"], e["code"], e["message"], e["param"], status=d["status"])


class Claims:
    def __init__(
        self, engine: AsyncEngine, clock: Clock, *, lease_s: float = 600.0, wait_s: float = 60.0
    ) -> None:
        self.engine, self.clock = engine, clock
        self.lease_s, self.wait_s = lease_s, wait_s
        self._done: dict[tuple[str, str], asyncio.Event] = {}  # claims running in this process

    async def run(
        self, wallet_id: str, key: str, request: dict[str, Any], work: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """``work()``'s answer, computed once for the key; see the module's docstring."""
        fp = fingerprint(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        row: Any = None
        while True:
            owner = await (self._insert(wallet_id, key, fp) if row is None else self._take(row))
            if owner is not None:
                return await self._own(wallet_id, key, owner, work)
            row = await self._read(wallet_id, key)
            if row is None:
                continue  # released meanwhile: claim it
            if row.fingerprint != fp:
                raise conflict(
                    "idempotency_key_reused",
                    "this idempotency key was used for a different request; use a new key",
                    "idempotency_key",
                )
            if row.status == "done":
                out: dict[str, Any] = json.loads(row.response)
                return out
            if row.status == "failed":
                raise _error(json.loads(row.response))
            if self._takeable(row):
                continue
            if loop.time() >= deadline:
                raise conflict(
                    "idempotency_in_progress",
                    "a request with this idempotency key is still being processed; retry later",
                    "idempotency_key",
                )
            ev = self._done.get((wallet_id, key))
            wait = min(0.2, max(deadline - loop.time(), 0.0))
            if ev is not None:
                try:
                    await asyncio.wait_for(ev.wait(), wait)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(wait)

    async def _own(
        self, wallet_id: str, key: str, owner: str, work: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        ev = self._done[(wallet_id, key)] = asyncio.Event()
        try:
            try:
                out = await work()
            except TollwayError as e:
                await self._finish(wallet_id, key, owner, "failed", {"status": e.status, **e.to_dict()})
                raise
            except Outcome as o:
                await self._finish(wallet_id, key, owner, o.status, o.response)
                raise o.error from None
            except BaseException:
                await asyncio.shield(self._release(wallet_id, key, owner))
                raise
            done: dict[str, Any] = json.loads(await self._finish(wallet_id, key, owner, "done", out))
            return done  # what every other call with the key gets, to the byte
        finally:
            ev.set()
            if self._done.get((wallet_id, key)) is ev:
                del self._done[(wallet_id, key)]

    def _takeable(self, row: Any) -> bool:
        """A claim waiting for approval, or one whose process died while running."""
        return bool(
            row.status == "pending" or (row.status == "running" and row.lease_until_us < self.clock.now_us())
        )

    async def _insert(self, wallet_id: str, key: str, fp: str) -> str | None:
        now, owner = self.clock.now_us(), new_id("pclm")
        row = {
            "wallet_id": wallet_id, "key": key, "fingerprint": fp, "status": "running", "owner": owner,
            "lease_until_us": now + int(self.lease_s * 1_000_000), "response": None,
            "created_at_us": now, "updated_at_us": now,
        }  # fmt: skip
        try:
            async with writer(self.engine).begin() as conn:
                await conn.execute(insert(C), [row])
        except IntegrityError:
            return None
        return owner

    async def _take(self, row: Any) -> str | None:
        """Take over a claim that is takeable (see :meth:`_takeable`), if still so."""
        if not self._takeable(row):
            return None
        now, owner = self.clock.now_us(), new_id("pclm")
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                update(C)
                .where(
                    C.c.wallet_id == row.wallet_id,
                    C.c.key == row.key,
                    C.c.owner == row.owner,
                    or_(C.c.status == "pending", and_(C.c.status == "running", C.c.lease_until_us < now)),
                )
                .values(
                    status="running",
                    owner=owner,
                    lease_until_us=now + int(self.lease_s * 1_000_000),
                    updated_at_us=now,
                )
            )
        return owner if r.rowcount == 1 else None

    async def _read(self, wallet_id: str, key: str) -> Any:
        async with self.engine.connect() as conn:
            q = select(C).where(C.c.wallet_id == wallet_id, C.c.key == key)
            return (await conn.execute(q)).first()

    async def _finish(
        self, wallet_id: str, key: str, owner: str, status: str, response: dict[str, Any]
    ) -> str:
        text = json.dumps(response, separators=(",", ":"), default=str)
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                update(C)
                .where(C.c.wallet_id == wallet_id, C.c.key == key, C.c.owner == owner)
                .values(status=status, response=text, updated_at_us=self.clock.now_us())
            )
        return text

    async def _release(self, wallet_id: str, key: str, owner: str) -> None:
        async with writer(self.engine).begin() as conn:
            await conn.execute(
                delete(C).where(C.c.wallet_id == wallet_id, C.c.key == key, C.c.owner == owner)
            )
