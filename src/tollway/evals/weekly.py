"""The weekly eval run on tollway.schedules (``[evals] weekly = true``): one
cron schedule (owner ``evals``, task ``evals.weekly``), made once however
many processes start; each run grades every agent."""

from __future__ import annotations

import logging

from tollway.core.errors import TollwayError
from tollway.evals.service import Evals
from tollway.schedules import Schedule, Scheduler

log = logging.getLogger("tollway.evals")

TASK = "evals.weekly"
OWNER = "evals"


class Weekly:
    def __init__(self, evals: Evals, scheduler: Scheduler) -> None:
        self.evals = evals
        self.scheduler = scheduler
        scheduler.register(TASK, self.run)

    async def ensure(self) -> Schedule | None:
        """The weekly schedule, made if enabled (idempotent: one per cron expression);
        a schedule of another cron expression, or any when disabled, is cancelled."""
        cfg = self.evals.cfg
        for s in await self.scheduler.list(OWNER):
            if s.task == TASK and (not cfg.weekly or s.cron != cfg.weekly_cron):
                await self.scheduler.cancel(OWNER, s.id)
        if not cfg.weekly:
            return None
        return await self.scheduler.schedule(
            OWNER, TASK, {}, cron=cfg.weekly_cron, idempotency_key=f"weekly:{cfg.weekly_cron}"
        )

    async def run(self, _: Schedule) -> None:
        for a in await self.evals.agents.registry.agents():
            try:
                out = await self.evals.run(a["name"])
                log.info("weekly eval of %s: %s", a["name"], out["summary"])
            except TollwayError as e:  # one agent's failure does not stop the others
                log.warning("weekly eval of %s failed: %s", a["name"], e.message)
