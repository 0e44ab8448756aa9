"""The console, built once per app: its sessions, its rollups' refresher."""

from __future__ import annotations

import asyncio
import logging

from tollway.console import rollups
from tollway.console.config import ConsoleConfig
from tollway.console.sessions import Sessions
from tollway.runtime import Runtime

log = logging.getLogger("tollway.console")


class Console:
    def __init__(self, rt: Runtime, cfg: ConsoleConfig) -> None:
        self.rt = rt
        self.cfg = cfg
        self.sessions = Sessions(rt.engine, rt.clock, cfg.session_hours)

    async def refresh(self) -> None:
        """Bring the overview's rollups up to date (the request log flushed first)."""
        await self.rt.gateway.log.flush()
        await rollups.refresh(self.rt.engine, self.rt.clock.now_us())

    async def run(self) -> None:
        """:meth:`refresh` every ``refresh_seconds``, in the server's lifespan; a failure is logged."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("the console's rollups could not be refreshed")
            await asyncio.sleep(self.cfg.refresh_seconds)
