"""The reaper: resources left unused for ``[provision] reap_after_seconds``
are flagged (a deployment with no requests, a domain with no records) and,
when asked (``--apply``, or ``reap_apply = true`` for the periodic run), torn
down. Each run reports the money saved: the recurring price of what was torn
down over its next period (a month of hosting, a year of the domain).

What its owner did not pay for (provision/dues.py) is reclaimed once it has
been suspended for ``reclaim_after_hours`` (:meth:`Reaper.reclaim`, run by
the billing tick whatever ``reap_apply`` says). Hosting and renewals are
charged for real, so the figure saved is money the wallet is no longer
charged (a month of hosting at ``hosting_monthly_price``, the renewal)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_domains as D
from tollway.core.schema import provision_records as R
from tollway.provision.config import ProvisionConfig
from tollway.provision.deployments import Deployments
from tollway.provision.domains import Domains
from tollway.provision.dues import Dues


class Reaper:
    def __init__(
        self,
        cfg: ProvisionConfig,
        engine: AsyncEngine,
        clock: Clock,
        domains: Domains,
        deployments: Deployments,
        dues: Dues,
    ) -> None:
        self.cfg, self.engine, self.clock = cfg, engine, clock
        self.domains, self.deployments, self.dues = domains, deployments, dues

    async def reclaim(self) -> dict[str, Any]:
        """Tear down what stayed unpaid and suspended past ``reclaim_after_hours``
        (each once across processes: its dues row is taken first)."""
        reclaimed: list[dict[str, Any]] = []
        for due in await self.dues.reclaimable():
            if not await self.dues.reclaimed(due):
                continue
            try:
                if due.kind == "deployment":
                    await self.deployments.delete(due.name, due.wallet_id)
                    price = self.cfg.hosting_monthly_price
                else:
                    dom = await self.domains.get(due.name, due.wallet_id)
                    price = dom.renew_price
                    await self.domains.teardown(dom)
            except TollwayError as e:  # gone already (deleted by its owner)
                if e.status != 404:
                    raise
                continue
            reclaimed.append({**due.to_dict(), "reason": "unpaid", "recurring_price": price})
        return {
            "object": "reclaim_report",
            "reclaimed": reclaimed,
            "saved": sum(r["recurring_price"] for r in reclaimed),
            "written_off": sum(r["amount"] for r in reclaimed),
            "currency": "usd",
        }

    async def run(self, apply: bool) -> dict[str, Any]:
        now = self.clock.now_us()
        cutoff = now - int(self.cfg.reap_after_seconds * 1_000_000)
        flagged: list[dict[str, Any]] = []
        async with self.engine.connect() as conn:
            deps = await conn.execute(
                select(P).where(P.c.status == "active", P.c.last_request_at_us < cutoff).order_by(P.c.name)
            )
            for d in deps:
                flagged.append({
                    "kind": "deployment", "id": d.id, "name": d.name, "wallet_id": d.wallet_id,
                    "reason": "no requests", "idle_seconds": (now - d.last_request_at_us) // 1_000_000,
                    "period": "month", "recurring_price": self.cfg.hosting_monthly_price,
                })  # fmt: skip
            with_records = select(R.c.zone).distinct()
            doms = await conn.execute(
                select(D)
                .where(D.c.status == "active", D.c.created_at_us < cutoff, D.c.name.not_in(with_records))
                .order_by(D.c.name)
            )
            for m in doms:
                flagged.append({
                    "kind": "domain", "id": m.id, "name": m.name, "wallet_id": m.wallet_id,
                    "reason": "no DNS records", "idle_seconds": (now - m.created_at_us) // 1_000_000,
                    "period": "year", "recurring_price": m.renew_price,
                })  # fmt: skip
        saved = 0
        torn: list[str] = []
        if apply:
            for f in flagged:
                if f["kind"] == "deployment":
                    await self.deployments.delete(f["name"], None)
                else:
                    await self.domains.teardown(await self.domains.get(f["name"]))
                torn.append(f["id"])
                saved += f["recurring_price"]
        return {
            "object": "reap_report",
            "applied": apply,
            "reap_after_seconds": self.cfg.reap_after_seconds,
            "flagged": flagged,
            "torn_down": torn,
            "saved": saved,
            "would_save": sum(f["recurring_price"] for f in flagged),
            "currency": "usd",
        }
