"""Provisioning, assembled: the provider, domains and DNS, deployments, the
edge that routes to them, the reaper, and their background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.schema import provision_deployments as P
from tollway.core.storage import sqlite_path, writer
from tollway.provision.ai_binding import AIBinding
from tollway.provision.ai_tokens import BindingTokens
from tollway.provision.claims import Claims
from tollway.provision.config import ProvisionSettings
from tollway.provision.deployments import Deployments
from tollway.provision.domains import Domains
from tollway.provision.dues import Dues
from tollway.provision.edge import Edge
from tollway.provision.providers.base import Provider
from tollway.provision.purchase import Purchases
from tollway.provision.reaper import Reaper
from tollway.provision.recurring import Recurring
from tollway.provision.runner import Runner
from tollway.wallets.authorize import Authorizer
from tollway.wallets.store import Wallets

log = logging.getLogger("tollway.provision")


def data_dir(settings: ProvisionSettings, engine: AsyncEngine) -> Path:
    if settings.provision.data_dir:
        return Path(settings.provision.data_dir)
    db = sqlite_path(engine)
    if db and db != ":memory:":
        return Path(db).resolve().parent / "provision"
    return Path(".tollway/provision").resolve()


class Provisioner:
    def __init__(
        self,
        settings: ProvisionSettings,
        engine: AsyncEngine,
        clock: Clock,
        wallets: Wallets,
        authorizer: Authorizer,
    ) -> None:
        cfg = self.cfg = settings.provision
        self.engine, self.clock = engine, clock
        self.runner = Runner(cfg, self._live_spec, data_dir(settings, engine))
        self.provider = _provider(settings, self.runner, engine)
        purchases = Purchases(authorizer, self.provider.name, Claims(engine, clock))
        self.dues = Dues(cfg, engine, clock, wallets.audit, authorizer.on_freeze)
        self.domains = Domains(cfg, engine, clock, wallets, wallets.audit, self.provider, purchases)
        self.deployments = Deployments(
            cfg, engine, clock, wallets, self.provider, purchases, self.domains, data_dir(settings, engine)
        )
        self.ai_tokens = BindingTokens(engine, clock, wallets)
        self.ai_binding = self.runner.binding = AIBinding(cfg, self.ai_tokens.bearer)
        self.deployments.on_delete.append(self.ai_tokens.revoke)
        self.reaper = Reaper(cfg, engine, clock, self.domains, self.deployments, self.dues)
        self.recurring = Recurring(
            cfg, engine, clock, purchases, self.dues, self.provider, self.deployments.invalidate
        )
        self.edge = Edge(
            self.deployments.route,
            self.runner.worker,
            self.runner.touch,
            handoff=cfg.edge_handoff,
            blocked=self.deployments.blocked,
            count=self.runner.count,
        )
        self.edge_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flushed: dict[str, float] = {}  # monotonic last request already written, per deployment
        # One flush or tick at a time in this process: a flush takes the runner's use before
        # it writes it, so a tick beside it would bill without that use (or find the charge
        # of the tick beside it still pending) and report nothing.
        self._ticking = asyncio.Lock()

    async def target(self, host: str) -> tuple[str, str] | None:
        """The edge's paywall's origin for ``host``: (its worker's URL, the wallet
        owning its deployment), waking the worker; None where nothing is deployed."""
        owned = await self.deployments.owner(host)
        if owned is None:
            return None
        dep, wallet_id = owned
        w = await self.runner.worker(dep, False)
        self.runner.touch(dep)
        return f"http://127.0.0.1:{w.port}", wallet_id

    async def _live_spec(self, deployment_id: str) -> Any:
        return await self.deployments.live_spec(deployment_id)

    async def start(self, edge_port: int | None = None) -> None:
        """The edge (``[provision] edge_port``; 0: off) and the background loops. Idempotent."""
        if self._tasks:
            return
        port = self.cfg.edge_port if edge_port is None else edge_port
        if port and self.provider.name == "local":
            try:
                self.edge_port = await self.edge.start(self.cfg.edge_host, port)
                log.info("provision edge on %s:%s", self.cfg.edge_host, self.edge_port)
            except OSError as e:  # e.g. a second tollway process on this host: it serves the rest
                log.warning(
                    "provision edge not started on %s:%s (%s): this process routes no deployments;"
                    " set [provision] edge_port to a free port, or 0 to turn the edge off",
                    self.cfg.edge_host, port, e,
                )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.runner.run_idle()), loop.create_task(self._background())]

    async def _background(self) -> None:
        """Record when deployments were last used (and their metered use), run the
        billing tick, and the reaper now and then."""
        last_reap = last_tick = time.monotonic()
        every_reap = max(min(self.cfg.reap_after_seconds / 10, 3600.0), 1.0)
        every_tick = max(min(self.cfg.billing_tick_seconds / 4, 60.0), 1.0)
        while True:
            await asyncio.sleep(5)
            try:
                await self.flush()
                if time.monotonic() - last_tick >= every_tick:
                    last_tick = time.monotonic()
                    await self.tick()
                if time.monotonic() - last_reap >= every_reap:
                    last_reap = time.monotonic()
                    report = await self.reap(self.cfg.reap_apply)
                    if report["flagged"]:
                        log.info(
                            "reaper flagged %d, tore down %d, saved %d micro-USD",
                            len(report["flagged"]), len(report["torn_down"]), report["saved"],
                        )  # fmt: skip
            except Exception:
                log.exception("provision background step failed")

    async def tick(self) -> dict[str, Any]:
        """The billing tick (idempotent per interval across processes): charge
        hosting and renewals, suspend what stayed unpaid past its grace, reclaim
        what stayed suspended (provision/recurring.py, dues.py). Waits for a flush or
        tick of this process in progress."""
        async with self._ticking:
            await self._flush()
            return await self._tick()

    async def _tick(self) -> dict[str, Any]:
        report = await self.recurring.tick()
        suspended = await self.dues.suspend_overdue()
        for due in suspended:
            if due.kind == "deployment":
                self.runner.stop(due.subject_id, forget=True)
        if suspended:
            self.deployments.invalidate()
        report["suspended"] = [d.to_dict() for d in suspended]
        report["reclaim"] = await self.reaper.reclaim()
        return report

    async def flush(self) -> None:
        """Write each deployment's last request time (seen by the edge, or by its
        worker) and its metered use."""
        async with self._ticking:
            await self._flush()

    async def _flush(self) -> None:
        await self.recurring.record(self.runner.usage())
        r = self.runner
        seen = {d: r.last_seen.get(d, 0.0) for d in r.touched}
        for d, w in r.running.items():
            seen[d] = max(seen.get(d, 0.0), r.last_seen.get(d, 0.0), w.last_request())
        r.touched = set()
        changed = {d: t for d, t in seen.items() if t > self._flushed.get(d, 0.0)}
        if not changed:
            return
        now_us, mono = self.clock.now_us(), time.monotonic()
        async with writer(self.engine).begin() as conn:
            for dep, t in changed.items():
                at = now_us - int((mono - t) * 1_000_000)
                await conn.execute(update(P).where(P.c.id == dep).values(last_request_at_us=at))
        self._flushed.update(changed)

    async def reap(self, apply: bool) -> dict[str, Any]:
        await self.flush()
        return await self.reaper.run(apply)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()
        await self.edge.close()
        await self.provider.aclose()
        if self.provider.name != "local":
            await self.runner.close()


def _provider(settings: ProvisionSettings, runner: Runner, engine: AsyncEngine) -> Provider:
    if settings.provision.provider == "cloudflare":
        from tollway.provision.providers.cloudflare import CloudflareProvider  # the SDK loads only when used

        return CloudflareProvider(settings.provision)
    from tollway.provision.providers.local import LocalProvider

    return LocalProvider(settings.provision, runner, engine)
