"""Alerts: one table, each alert raised once, delivered to webhooks.

Anything that needs an operator's attention raises an alert with
:func:`raise_alert` (inside the caller's own transaction) or
:meth:`Alerts.raise_alert`: a kind, a subject (what it is about), a JSON
payload and a dedupe key. The key is unique, so an alert raised again (by
another process, a rebuild, a later check) is not raised twice. Delivery to
the configured webhooks is :mod:`tollway.alerts.delivery`'s (on tollway.schedules); what
raises each kind is :mod:`tollway.observe.alert_checks` (the periodic
checks) and the faces that call ``raise_alert`` (usage anomalies, frozen
tokens, suspensions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollway.core.clock import Clock
from tollway.core.config import Section
from tollway.core.errors import conflict, invalid, not_found
from tollway.core.ids import new_id
from tollway.core.schema import alerts as A
from tollway.core.schema import schedules as SCH
from tollway.core.storage import writer

# The kinds tollway raises; raise_alert takes any name of this form (another face's own kinds).
BUDGET_THRESHOLD = "budget_threshold"
USAGE_ANOMALY = "usage_anomaly"
WALLET_LOW_BALANCE = "wallet_low_balance"
APPROVAL_WAITING = "approval_waiting"
ESCALATION_WAITING = "escalation_waiting"
DEPLOYMENT_FAILED = "deployment_failed"
RESOURCE_SUSPENDED = "resource_suspended"
TOKEN_FROZEN = "token_frozen"
KINDS = (
    BUDGET_THRESHOLD,
    USAGE_ANOMALY,
    WALLET_LOW_BALANCE,
    APPROVAL_WAITING,
    ESCALATION_WAITING,
    DEPLOYMENT_FAILED,
    RESOURCE_SUSPENDED,
    TOKEN_FROZEN,
)
STATUSES = ("open", "acked")
# Each delivery is a schedule (tollway.alerts.delivery): owner "alert:<id>", this task.
DELIVERY_OWNER = "alert:"
DELIVERY_TASK = "alert.deliver"
MAX_LIST = 1000


class Webhook(Section):
    """One receiver: ``kinds`` empty means every kind."""

    url: str
    secret: str = ""  # signs each delivery (Tollway-Signature); empty: unsigned
    kinds: list[str] = Field(default_factory=list)

    def wants(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


class AlertsConfig(Section):
    """``[alerts]``: what raises alerts and where they are delivered (docs/observability.md)."""

    webhooks: list[Webhook] = Field(default_factory=list)
    # Hosts or CIDRs on private networks webhooks may reach (the SSRF guard refuses them otherwise).
    allow: list[str] = Field(default_factory=list)
    fan_out_seconds: float = Field(2.0, gt=0)  # how often new alerts become deliveries (schedules)
    check_seconds: float = Field(30.0, gt=0)  # how often the conditions are checked
    # A delivery's attempts before it is given up; retried with [schedules]' backoff (1 s, doubled).
    max_attempts: int = Field(8, ge=1, le=50)
    timeout_seconds: float = Field(10.0, gt=0)  # one POST
    budget_thresholds: list[int] = Field(default_factory=lambda: [50, 80, 100])  # % of a budget
    wallet_low_balance: str = ""  # e.g. "$5": alert when a wallet's available balance is below

    @field_validator("budget_thresholds")
    @classmethod
    def _percents(cls, v: list[int]) -> list[int]:
        if any(not 1 <= p <= 1000 for p in v):
            raise ValueError("budget_thresholds are percentages between 1 and 1000")
        return sorted(set(v))


@dataclass(slots=True)
class Alert:
    id: str
    kind: str
    subject: str
    dedupe: str
    payload: dict[str, Any]
    status: str
    created_at_us: int
    acked_at_us: int | None = None
    acked_by: str | None = None
    deliveries: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "alert",
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "dedupe": self.dedupe,
            "payload": self.payload,
            "status": self.status,
            "created_at_us": self.created_at_us,
            "acked_at_us": self.acked_at_us,
            "acked_by": self.acked_by,
        }
        if self.deliveries is not None:
            out["deliveries"] = self.deliveries
        return out


def insert_or_skip(conn: AsyncConnection, table: Table, values: dict[str, Any], key: list[str]) -> Any:
    """INSERT ... ON CONFLICT (``key``) DO NOTHING, in the connection's dialect."""
    cols = [table.c[k] for k in key]
    if conn.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**values).on_conflict_do_nothing(index_elements=cols)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).values(**values).on_conflict_do_nothing(index_elements=cols)


async def raise_alert(
    conn: AsyncConnection,
    now_us: int,
    kind: str,
    subject: str,
    payload: dict[str, Any],
    dedupe: str,
) -> str | None:
    """Raise an alert in the caller's transaction: its id, or None when its
    ``dedupe`` key was raised before (by anyone, any process)."""
    aid = new_id("alt")
    r = await conn.execute(
        insert_or_skip(
            conn,
            A,
            {
                "id": aid,
                "kind": kind[:32],
                "subject": subject[:200],
                "dedupe": dedupe[:400],
                "payload": json.dumps(payload, default=str),
                "status": "open",
                "fanned": 0,
                "created_at_us": now_us,
            },
            ["dedupe"],
        )
    )
    return aid if r.rowcount == 1 else None


def _alert(r: Any) -> Alert:
    return Alert(
        r.id,
        r.kind,
        r.subject,
        r.dedupe,
        json.loads(r.payload),
        r.status,
        r.created_at_us,
        r.acked_at_us,
        r.acked_by,
    )


class Alerts:
    """Raise, list and acknowledge alerts."""

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def raise_alert(self, kind: str, subject: str, payload: dict[str, Any], dedupe: str) -> str | None:
        """Raise an alert (its own transaction); None when ``dedupe`` was raised before."""
        async with writer(self.engine).begin() as conn:
            return await raise_alert(conn, self.clock.now_us(), kind, subject, payload, dedupe)

    async def list(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        subject: str | None = None,
        since_us: int | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        if status is not None and status not in STATUSES:
            raise invalid("invalid_status", "status is open or acked", "status")
        if not 1 <= limit <= MAX_LIST:
            raise invalid("invalid_limit", f"limit is between 1 and {MAX_LIST}", "limit")
        q = select(A)
        if kind is not None:
            q = q.where(A.c.kind == kind)
        if status is not None:
            q = q.where(A.c.status == status)
        if subject is not None:
            q = q.where(A.c.subject == subject)
        if since_us is not None:
            q = q.where(A.c.created_at_us >= since_us)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(q.order_by(A.c.created_at_us.desc(), A.c.id.desc()).limit(limit))
            ).all()
            found = [_alert(r) for r in rows]
            by_id = {a.id: a for a in found}
            for a in found:
                a.deliveries = []
            if by_id:  # their deliveries: the schedules tollway.alerts.delivery made
                owners = {f"{DELIVERY_OWNER}{i}": i for i in by_id}
                ds = await conn.execute(
                    select(SCH.c.owner, SCH.c.payload, SCH.c.status, SCH.c.attempts, SCH.c.last_error)
                    .where(SCH.c.owner.in_(list(owners)), SCH.c.task == DELIVERY_TASK)
                    .order_by(SCH.c.created_us)
                )
                for d in ds:
                    deliveries = by_id[owners[d.owner]].deliveries
                    assert deliveries is not None
                    deliveries.append(
                        {
                            "url": json.loads(d.payload).get("url"),
                            "status": "delivered" if d.status == "done" else d.status,
                            "attempts": d.attempts,
                            "last_error": d.last_error,
                        }
                    )
        return found

    async def get(self, alert_id: str) -> Alert:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(A).where(A.c.id == alert_id))).first()
        if r is None:
            raise not_found("alert_not_found", f"no alert {alert_id!r}", "id")
        return _alert(r)

    async def ack(self, alert_id: str, by: str) -> Alert:
        """Acknowledge an open alert (409 when it already is)."""
        if not isinstance(by, str) or not 1 <= len(by) <= 200:
            raise invalid("invalid_by", "by names who acknowledges (1 to 200 characters)", "by")
        await self.get(alert_id)
        async with writer(self.engine).begin() as conn:
            done = await conn.execute(
                update(A)
                .where(A.c.id == alert_id, A.c.status == "open")
                .values(status="acked", acked_at_us=self.clock.now_us(), acked_by=by)
            )
        if done.rowcount != 1:
            raise conflict("alert_acked", f"alert {alert_id} is already acknowledged", "id")
        return await self.get(alert_id)
