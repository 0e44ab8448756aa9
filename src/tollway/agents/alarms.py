"""A session's alarms (Durable Object alarms): a message delivered to the
session later — after a delay, at a time, or on a cron — through the same
single-writer turn as any other message. Persisted and run at least once by
tollway.schedules (owner ``agent:{agent}:{stored session id}``, task ``agent.message``);
a run delivered twice makes one turn."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from tollway.agents.service import Agents
from tollway.agents.store import public, scoped
from tollway.core.errors import TollwayError, invalid
from tollway.inference.service import Caller
from tollway.schedules import Schedule, Scheduler

log = logging.getLogger("tollway.agents")

TASK = "agent.message"
_FIELDS = {"content", "delay_seconds", "at", "cron", "max_attempts", "idempotency_key"}


def owner(agent: str, session_id: str) -> str:
    return f"agent:{agent}:{session_id}"


class Alarms:
    def __init__(self, agents: Agents, scheduler: Scheduler) -> None:
        self.agents = agents
        self.scheduler = scheduler
        scheduler.register(TASK, self.deliver)

    async def deliver(self, s: Schedule) -> None:
        _, agent, stored = s.owner.split(":", 2)
        session_id = public(stored)  # send() names it in the customer's namespace again
        p = s.payload
        caller = Caller(p["customer_id"], p["account_id"])
        origin = {"schedule": s.id, "run_us": s.next_run_us}
        try:
            await self.agents.send(caller, agent, session_id, p["content"], origin=origin)
        except TollwayError as e:
            if e.status in (400, 404):  # the session or agent is gone, or the message no longer fits
                log.warning("schedule %s: not delivered: %s", s.id, e.message)
                return
            raise  # retried with backoff (a 402, a failing model)

    async def schedule(self, caller: Caller, agent: str, session_id: str, body: dict[str, Any]) -> Schedule:
        extra = sorted(set(body) - _FIELDS)
        if extra:
            raise invalid("unknown_parameter", f"unknown field {extra[0]!r}", extra[0])
        await self.agents.check(caller.customer_id, agent, session_id, body.get("content"))
        at = body.get("at")
        at_us = None
        if at is not None:
            if not isinstance(at, str):
                raise invalid("invalid_schedule", "at is an ISO 8601 time with its zone", "at")
            try:
                when = dt.datetime.fromisoformat(at)
            except ValueError:
                raise invalid("invalid_schedule", "at is an ISO 8601 time with its zone", "at") from None
            if when.tzinfo is None:
                raise invalid("invalid_schedule", "at needs a time zone (e.g. Z or +00:00)", "at")
            at_us = int(when.timestamp() * 1_000_000)
        payload = {
            "content": body["content"],
            "customer_id": caller.customer_id,
            "account_id": caller.account_id,
        }
        try:
            return await self.scheduler.schedule(
                owner(agent, scoped(caller.customer_id, session_id)),
                TASK,
                payload,
                delay_s=body.get("delay_seconds"),
                at_us=at_us,
                cron=body.get("cron"),
                max_attempts=body.get("max_attempts", 5),
                idempotency_key=body.get("idempotency_key"),
            )
        except TollwayError as e:  # name the fields as this API calls them
            if e.param in ("delay_s", "at_us"):
                e.param = {"delay_s": "delay_seconds", "at_us": "at"}[e.param]
                e.message = e.message.replace("delay_s", "delay_seconds").replace("at_us", "at")
            raise

    async def list(self, customer_id: str, agent: str, session_id: str, include_done: bool) -> list[Schedule]:
        await self.agents.session(customer_id, agent, session_id)
        return await self.scheduler.list(
            owner(agent, scoped(customer_id, session_id)), include_done=include_done
        )

    async def get(self, customer_id: str, agent: str, session_id: str, schedule_id: str) -> Schedule:
        await self.agents.session(customer_id, agent, session_id)
        return await self.scheduler.get(owner(agent, scoped(customer_id, session_id)), schedule_id)

    async def cancel(self, customer_id: str, agent: str, session_id: str, schedule_id: str) -> Schedule:
        await self.agents.session(customer_id, agent, session_id)
        return await self.scheduler.cancel(owner(agent, scoped(customer_id, session_id)), schedule_id)
