"""Autopilot, opt-in per wallet: the owner's standing orders.

- ``spend_floor``: when the wallet's balance is below the floor, new spending
  is refused (``wallet_below_floor``, at screening) until it is topped up. An
  authorization is refused when what would be left available after it is
  below the floor; concurrent authorizations are each checked against the
  balance they see (the ledger keeps the balance itself exact).
- ``teardown_unprofitable`` ``{window_days, min_age_days}``: a deployment at
  least ``min_age_days`` old whose costs exceeded its revenue over the last
  ``window_days`` (:func:`tollway.wallets.pnl.deployment_pnl`) is torn down
  through the provisioner's normal delete path.

The periodic check (:meth:`Autopilot.check`, every ``[wallets]
autopilot_seconds``) audits each decision with the figures it used:
``autopilot_teardown``, ``autopilot_below_floor`` and
``autopilot_floor_cleared``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError, field_validator
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.errors import TollwayError
from tollway.core.schema import wallet_autopilot as AP
from tollway.core.storage import writer
from tollway.ledger import Ledger
from tollway.wallets.audit import Audit
from tollway.wallets.pnl import deployment_pnl, deployments, wallet_pnl
from tollway.wallets.policy import _money, _Strict
from tollway.wallets.screening import below_floor
from tollway.wallets.store import Wallet, Wallets, policy_error

log = logging.getLogger("tollway.wallets")
_DAY_US = 86_400_000_000
_SETTINGS = "SELECT settings FROM wallet_autopilot WHERE wallet_id = ?"

Teardown = Callable[[str, str], Awaitable[Any]]  # (deployment name, wallet id): the provisioner's delete


class Unprofitable(_Strict):
    window_days: int = Field(7, ge=1, le=366)
    min_age_days: int = Field(3, ge=0, le=366)


class AutopilotSettings(_Strict):
    enabled: bool = True
    teardown_unprofitable: Unprofitable | None = None
    spend_floor: int | None = None  # micro-USD ("$1" is accepted)

    @field_validator("spend_floor", mode="before")
    @classmethod
    def _floor(cls, v: Any) -> int | None:
        return None if v is None else _money(v, "spend_floor")


@dataclass
class Autopilot:
    engine: AsyncEngine
    ledger: Ledger
    clock: Clock
    wallets: Wallets
    audit: Audit
    teardown: Teardown | None = None  # set by the runtime: Deployments.delete
    apps_domain: str = "tollway.localhost"  # the deployments' default hosts: NAME.<apps_domain>
    _parsed: dict[str, AutopilotSettings] = field(init=False, default_factory=dict)

    # ------------------------------------------------------------- settings

    async def settings(self, wallet_id: str, known: str | None = None) -> AutopilotSettings | None:
        """The wallet's settings, or None: no autopilot. ``known``: their JSON as
        already read with the token ("" for none); else one point read."""
        if known is None:
            r = await self.wallets.reads.one(_SETTINGS, wallet_id)
            known = "" if r is None else str(r[0])
        if not known:
            return None
        s = self._parsed.get(known)
        if s is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            s = self._parsed[known] = AutopilotSettings.model_validate_json(known)
        return s

    async def put(self, wallet_id: str, settings: dict[str, Any], actor: str = "admin") -> dict[str, Any]:
        try:
            s = AutopilotSettings.model_validate(settings)
        except ValidationError as e:
            raise policy_error(e, "autopilot") from None
        await self.wallets.get(wallet_id)
        now, text = self.clock.now_us(), s.model_dump_json()
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                update(AP).where(AP.c.wallet_id == wallet_id).values(settings=text, updated_at_us=now)
            )
            if not r.rowcount:
                row = {
                    "wallet_id": wallet_id,
                    "settings": text,
                    "below_floor_since_us": None,
                    "updated_at_us": now,
                }
                await conn.execute(insert(AP), [row])
        await self.audit.write(
            [self.audit.row(wallet_id, "autopilot_updated", actor=actor, settings=s.model_dump())]
        )
        return await self.get(wallet_id)

    async def get(self, wallet_id: str) -> dict[str, Any]:
        await self.wallets.get(wallet_id)
        s = await self.settings(wallet_id)
        return {
            "object": "wallet_autopilot",
            "wallet_id": wallet_id,
            **(s or AutopilotSettings(enabled=False)).model_dump(),
        }

    # ------------------------------------------------------------ the floor

    async def floor_refusal(self, wallet: Wallet, amount: int) -> tuple[str | None, str]:
        """Screening's floor check: (reason, message), or (None, "")."""
        s = await self.settings(wallet.id, wallet.autopilot)  # read with the token: no I/O here
        if s is None or not s.enabled or s.spend_floor is None:
            return None, ""
        available = (await self.ledger.get_account(wallet.account_id)).available
        return below_floor(available, amount, s.spend_floor) or (None, "")

    # ------------------------------------------------------------ the check

    async def check(self) -> list[dict[str, Any]]:
        """One pass over the wallets with autopilot on: the decisions made (each audited)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(AP.c.wallet_id, AP.c.settings, AP.c.below_floor_since_us))
            ).all()
        out: list[dict[str, Any]] = []
        for wallet_id, text, since in rows:
            s = AutopilotSettings.model_validate_json(text)
            if not s.enabled:
                continue
            try:
                w = await self.wallets.get(wallet_id)
                if s.spend_floor is not None:
                    out += await self._floor(w, s.spend_floor, since)
                if s.teardown_unprofitable is not None:
                    out += await self._unprofitable(w, s.teardown_unprofitable)
            except Exception:
                log.exception("autopilot check of wallet %s failed", wallet_id)
        return out

    async def _floor(self, w: Wallet, floor: int, since: int | None) -> list[dict[str, Any]]:
        acct = await self.ledger.get_account(w.account_id)
        below = acct.available < floor
        if below == (since is not None):
            return []  # no change: nothing to decide
        event = "autopilot_below_floor" if below else "autopilot_floor_cleared"
        now = self.clock.now_us()
        async with writer(self.engine).begin() as conn:
            r = await conn.execute(
                update(AP)
                .where(
                    AP.c.wallet_id == w.id,
                    AP.c.below_floor_since_us.is_(None) if below else AP.c.below_floor_since_us.is_not(None),
                )
                .values(below_floor_since_us=now if below else None)
            )
        if not r.rowcount:  # another process decided it
            return []
        why = (
            f"available balance {acct.available} is below the floor {floor}: new spending is refused"
            if below
            else f"available balance {acct.available} is back at or above the floor {floor}: spending resumes"
        )
        detail: dict[str, Any] = {
            "balance": acct.balance,
            "available": acct.available,
            "floor": floor,
            "explanation": why,
        }
        await self.audit.write([self.audit.row(w.id, event, actor="autopilot", **detail)])
        return [{"wallet_id": w.id, "decision": event, **detail}]

    async def _unprofitable(self, w: Wallet, rule: Unprofitable) -> list[dict[str, Any]]:
        now = self.clock.now_us()
        since = now - rule.window_days * _DAY_US
        deps = await deployments(self.engine, w.id, self.apps_domain, now - rule.min_age_days * _DAY_US)
        if not deps:
            return []
        report = await wallet_pnl(self.engine, w.id, w.account_id, since, now + 1)
        out = []
        for dep in deps:
            figures = deployment_pnl(report, dep)
            if figures["costs"] <= figures["revenue"]:
                continue
            why = (
                f"deployment {dep.name} cost {figures['costs']} and earned {figures['revenue']} micro-USD"
                f" over the last {rule.window_days} days: torn down"
            )
            if self.teardown is None:
                log.warning("autopilot: no provisioner to tear down %s", dep.name)
                continue
            try:
                await self.teardown(dep.name, w.id)
            except TollwayError as e:
                if e.code != "deployment_not_found":  # torn down meanwhile (another process)
                    raise
                continue
            detail: dict[str, Any] = {
                "deployment_id": dep.id, "deployment": dep.name, "window_days": rule.window_days,
                "from_us": since, "to_us": now, **figures, "explanation": why,
            }  # fmt: skip
            await self.audit.write([self.audit.row(w.id, "autopilot_teardown", actor="autopilot", **detail)])
            out.append({"wallet_id": w.id, "decision": "autopilot_teardown", **detail})
        return out

    async def run(self, interval_s: float) -> None:
        """:meth:`check` forever (in the server's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("autopilot check failed; retrying in %ss", interval_s)
