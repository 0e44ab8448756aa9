"""The console, built once per app: its sessions, its rollups' refresher."""

from __future__ import annotations

import asyncio
import logging
import time

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
        self._refreshed = -float("inf")  # time.monotonic() of the last refresh
        self._refreshing = asyncio.Lock()

    async def refresh(self) -> None:
        """Bring the overview's rollups up to date (the request log flushed first)."""
        await self.rt.gateway.log.flush()
        await rollups.refresh(self.rt.engine, self.rt.clock.now_us())
        self._refreshed = time.monotonic()

    async def fresh(self) -> None:
        """The rollups at most ``refresh_seconds`` old: refreshed now if older (once,
        however many views ask at the same time). Every signed-in view asks."""
        if time.monotonic() - self._refreshed < self.cfg.refresh_seconds:
            return
        async with self._refreshing:
            if time.monotonic() - self._refreshed < self.cfg.refresh_seconds:
                return
            await self.refresh()

    async def run(self) -> None:
        """:meth:`refresh` every ``background_seconds`` (in the server's lifespan; a
        failure is logged), so that a view's refresh has little to catch up on. A
        refresh rebuilds the last hours of rollups from the request log, so its cost
        grows with the traffic: while nobody looks, it runs seldom."""
        while True:
            if time.monotonic() - self._refreshed >= self.cfg.background_seconds:
                try:
                    async with self._refreshing:
                        await self.refresh()
                except Exception:
                    log.exception("the console's rollups could not be refreshed")
            await asyncio.sleep(min(self.cfg.background_seconds, 60.0))
