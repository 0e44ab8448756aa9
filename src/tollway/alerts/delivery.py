"""Alert webhooks: each alert, to each webhook that wants its kind, once.

Raising an alert (tollway.observe.alerts) is one insert, in any layer's
transaction; delivering it is this module's, on tollway.schedules: a new
alert is fanned out into one schedule per webhook (owner ``alert:<id>``,
task ``alert.deliver``, made idempotently, then the alert's ``fanned``
flag set), and the scheduler runs each: claimed by one process at a time
under a lease, retried with exponential backoff up to ``[alerts]
max_attempts`` (a non-2xx answer, a timeout or a refused address fails the
attempt), persisted, so a restart continues where the last process stopped.

Each POST goes through the SSRF guard (tollway.wallets.ssrf; ``[alerts]
allow`` lets private targets through) and is signed as Stripe signs its
webhooks: ``Tollway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the webhook's secret>``; :func:`verify` is the receiver's
check. The body carries the alert's id: a receiver drops the repeat that a
crash between its answer and the scheduler's bookkeeping can cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import alerts as A
from tollway.core.storage import writer
from tollway.observe.alerts import DELIVERY_OWNER, DELIVERY_TASK, AlertsConfig, Webhook
from tollway.schedules import Schedule, Scheduler
from tollway.wallets.ssrf import Guard

log = logging.getLogger("tollway.alerts")

HEADER = "Tollway-Signature"
_US = 1_000_000


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
    """The delivered body: the alert."""
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


class Delivery:
    """Fans alerts out onto the scheduler, and is its ``alert.deliver`` handler."""

    def __init__(self, engine: AsyncEngine, clock: Clock, cfg: AlertsConfig, scheduler: Scheduler) -> None:
        self.engine = engine
        self.clock = clock
        self.cfg = cfg
        self.scheduler = scheduler
        self.guard = Guard(cfg.allow)
        scheduler.register(DELIVERY_TASK, self.deliver)

    def _webhook(self, url: str) -> Webhook | None:
        return next((w for w in self.cfg.webhooks if w.url == url), None)

    async def fan_out(self, *, limit: int = 500) -> int:
        """A delivery schedule per webhook for each alert not fanned out yet;
        returns how many alerts. Idempotent: any number of processes may run it."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(A.c.id, A.c.kind).where(A.c.fanned == 0).order_by(A.c.created_at_us).limit(limit)
                )
            ).all()
        for r in rows:
            for url in dict.fromkeys(w.url for w in self.cfg.webhooks if w.wants(r.kind)):
                await self.scheduler.schedule(
                    f"{DELIVERY_OWNER}{r.id}",
                    DELIVERY_TASK,
                    {"url": url},
                    delay_s=0,
                    max_attempts=self.cfg.max_attempts,
                    idempotency_key="webhook:" + hashlib.sha256(url.encode()).hexdigest()[:40],
                )
            async with writer(self.engine).begin() as conn:
                await conn.execute(update(A).where(A.c.id == r.id).values(fanned=1))
        return len(rows)

    async def deliver(self, s: Schedule) -> None:
        """One attempt: POST the alert; anything but a 2xx raises (the scheduler retries)."""
        alert_id = s.owner.removeprefix(DELIVERY_OWNER)
        url = str(s.payload.get("url", ""))
        hook = self._webhook(url)
        if hook is None:
            log.warning("alert %s: webhook %s is no longer configured; not delivered", alert_id, url)
            return
        async with self.engine.connect() as conn:
            a = (await conn.execute(select(A).where(A.c.id == alert_id))).first()
        if a is None:
            return
        body = envelope(a)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tollway-alerts",
            "Tollway-Alert-Id": a.id,
            "Tollway-Delivery-Id": s.id,
        }
        if hook.secret:
            headers[HEADER] = signature(hook.secret, body, self.clock.now_us() // _US)
        answer = await self.guard.fetch(
            "POST", url, headers=headers, body=body, timeout_s=self.cfg.timeout_seconds, max_bytes=65536
        )
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"the webhook answered {answer.status}")

    async def run(self, interval_s: float) -> None:
        """Fan out every ``interval_s`` (the server's background loop; the scheduler delivers)."""
        while True:
            try:
                await self.fan_out()
            except Exception:  # a database hiccup: the next round tries again
                log.exception("fanning out alerts failed")
            await asyncio.sleep(interval_s)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.guard.aclose()
