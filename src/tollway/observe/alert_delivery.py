"""Alert webhooks: each alert, to each webhook that wants its kind, once.

A new alert is fanned out (one ``alert_deliveries`` row per webhook, by one
process: the alert's ``fanned`` flag flips once); a due delivery is claimed
by one process at a time (a lease: a process that dies mid-POST leaves it to
another after ``lease_seconds``), POSTed and marked delivered, or retried
with exponential backoff up to ``max_attempts``. The rows are the state, so
a restart continues where the last process stopped.

Each POST is signed as Stripe signs its webhooks: ``Tollway-Signature:
t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the webhook's
secret>``; :func:`verify` is the receiver's check. The body carries the
alert's id, which a receiver uses to drop the repeat a crash between its
answer and our bookkeeping can cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any, Protocol

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.ids import new_id
from tollway.core.schema import alert_deliveries as D
from tollway.core.schema import alerts as A
from tollway.core.storage import writer
from tollway.observe.alerts import AlertsConfig, Webhook

log = logging.getLogger("tollway.alerts")

HEADER = "Tollway-Signature"
_US = 1_000_000


class Answer(Protocol):
    @property
    def status(self) -> int: ...


class Fetcher(Protocol):
    """What posts a delivery: the SSRF guard (tollway.wallets.ssrf.Guard) in a server."""

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float = 30.0,
        max_bytes: int = 10 * 2**20,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


def signature(secret: str, body: bytes, t: int) -> str:
    """The ``Tollway-Signature`` header's value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """A receiver's check of a delivery: a ``v1`` signature of this body by this
    secret, sent within ``tolerance_s`` of ``now`` (a replay is refused)."""
    try:
        parts = [p.split("=", 1) for p in header.split(",")]
        t = int(next(v for k, v in parts if k == "t"))
        sigs = [v for k, v in parts if k == "v1"]
    except (ValueError, StopIteration):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    want = signature(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(want, s) for s in sigs)


def envelope(row: Any) -> bytes:
    """The delivered body: the alert as the API lists it."""
    return json.dumps(
        {
            "object": "alert",
            "id": row.id,
            "kind": row.kind,
            "subject": row.subject,
            "payload": json.loads(row.payload),
            "created": row.created_at_us // _US,
            "created_at_us": row.created_at_us,
        },
        separators=(",", ":"),
    ).encode()


class Deliverer:
    def __init__(self, engine: AsyncEngine, clock: Clock, cfg: AlertsConfig, fetcher: Fetcher | None) -> None:
        self.engine = engine
        self.clock = clock
        self.cfg = cfg
        self.fetcher = fetcher

    def _webhook(self, url: str) -> Webhook | None:
        return next((w for w in self.cfg.webhooks if w.url == url), None)

    async def fan_out(self, *, limit: int = 500) -> int:
        """Make the deliveries of alerts not yet fanned out; returns how many."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(A.c.id, A.c.kind).where(A.c.fanned == 0).order_by(A.c.created_at_us).limit(limit)
                )
            ).all()
        made = 0
        for r in rows:
            now = self.clock.now_us()
            async with writer(self.engine).begin() as conn:
                won = await conn.execute(update(A).where(A.c.id == r.id, A.c.fanned == 0).values(fanned=1))
                if won.rowcount != 1:
                    continue  # another process fanned it out
                rows_d = [
                    {
                        "id": new_id("ald"),
                        "alert_id": r.id,
                        "url": w.url,
                        "status": "pending",
                        "attempts": 0,
                        "next_at_us": now,
                    }
                    for w in dict((w.url, w) for w in self.cfg.webhooks if w.wants(r.kind)).values()
                ]
                if rows_d:
                    await conn.execute(D.insert(), rows_d)
                made += len(rows_d)
        return made

    async def deliver_due(self, *, limit: int = 50) -> int:
        """Claim and POST due deliveries; returns how many were delivered now."""
        if self.fetcher is None:
            return 0
        now = self.clock.now_us()
        due = and_(
            D.c.status == "pending",
            D.c.next_at_us <= now,
            or_(D.c.lease_until_us.is_(None), D.c.lease_until_us < now),
        )
        async with self.engine.connect() as conn:
            ids = [
                r.id
                for r in await conn.execute(select(D.c.id).where(due).order_by(D.c.next_at_us).limit(limit))
            ]
        delivered = 0
        for did in ids:
            token = new_id("lease")
            lease_until = self.clock.now_us() + int(self.cfg.lease_seconds * _US)
            async with writer(self.engine).begin() as conn:
                won = await conn.execute(
                    update(D).where(D.c.id == did, due).values(lease_token=token, lease_until_us=lease_until)
                )
            if won.rowcount != 1:
                continue  # another process has it
            delivered += await self._attempt(did, token)
        return delivered

    async def _attempt(self, did: str, token: str) -> int:
        assert self.fetcher is not None
        async with self.engine.connect() as conn:
            d = (await conn.execute(select(D).where(D.c.id == did))).one()
            a = (await conn.execute(select(A).where(A.c.id == d.alert_id))).one()
        hook = self._webhook(d.url)
        error: str | None
        if hook is None:
            return await self._finish(
                did, token, d.attempts, "the webhook is no longer configured", final=True
            )
        body = envelope(a)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tollway-alerts",
            "Tollway-Alert-Id": a.id,
            "Tollway-Delivery-Id": did,
        }
        if hook.secret:
            headers[HEADER] = signature(hook.secret, body, self.clock.now_us() // _US)
        try:
            answer = await self.fetcher.fetch(
                "POST", d.url, headers=headers, body=body, timeout_s=self.cfg.timeout_seconds, max_bytes=65536
            )
            error = None if 200 <= answer.status < 300 else f"answered {answer.status}"
        except Exception as e:  # a refused target, a timeout, a reset: retried like a 5xx
            error = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
        return await self._finish(did, token, d.attempts, error)

    async def _finish(
        self, did: str, token: str, attempts: int, error: str | None, *, final: bool = False
    ) -> int:
        now = self.clock.now_us()
        n = attempts + 1
        values: dict[str, Any] = {"attempts": n, "lease_token": None, "lease_until_us": None}
        if error is None:
            values.update(status="delivered", delivered_at_us=now, last_error=None)
        elif final or n >= self.cfg.max_attempts:
            values.update(status="failed", last_error=error[:500])
            log.warning("alert delivery %s given up after %d attempts: %s", did, n, error)
        else:
            delay = min(self.cfg.backoff_seconds * 2 ** (n - 1), self.cfg.max_backoff_seconds)
            values.update(next_at_us=now + int(delay * _US), last_error=error[:500])
        async with writer(self.engine).begin() as conn:
            await conn.execute(update(D).where(D.c.id == did, D.c.lease_token == token).values(**values))
        return 1 if error is None else 0

    async def tick(self) -> int:
        await self.fan_out()
        return await self.deliver_due()

    async def run(self, interval_s: float) -> None:
        """Deliver every ``interval_s`` (the server's background loop)."""
        while True:
            try:
                await self.tick()
            except Exception:  # a database hiccup: the next tick tries again
                log.exception("alert delivery failed")
            await asyncio.sleep(interval_s)

    async def aclose(self) -> None:
        if self.fetcher is not None:
            with contextlib.suppress(Exception):
                await self.fetcher.aclose()
