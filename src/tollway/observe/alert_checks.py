"""The conditions checked for alerts, every ``[alerts] check_seconds``.

Each check reads the state its face keeps (every table is in
:mod:`tollway.core.schema`) and raises an alert per thing found, with a
dedupe key that makes it once: once per approval, escalation or failed
deployment version, once per budget account (a period) and threshold, once
per wallet and UTC day while its balance is low. Any number of processes may
check at once. Usage anomalies are raised by the rollup that flags them
(tollway.billing.usage), frozen tokens by the wallets' velocity guard,
suspensions by whoever suspends.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, exists, literal, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.clock import Clock
from tollway.core.money import format_usd, parse_amount
from tollway.core.schema import agent_escalations as E
from tollway.core.schema import alerts as A
from tollway.core.schema import ledger_accounts as L
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_versions as V
from tollway.core.schema import wallet_authorizations as W
from tollway.core.schema import wallets as WL
from tollway.core.storage import writer
from tollway.observe.alerts import (
    APPROVAL_WAITING,
    BUDGET_THRESHOLD,
    DEPLOYMENT_FAILED,
    ESCALATION_WAITING,
    WALLET_LOW_BALANCE,
    AlertsConfig,
    raise_alert,
)

Found = tuple[str, str, dict[str, Any], str]  # (kind, subject, payload, dedupe)
_BATCH = 500


def _not_raised(prefix: str, col: Any) -> Any:
    """No alert yet whose dedupe key is ``prefix`` + the column."""
    return ~exists().where(A.c.dedupe == literal(prefix) + col)


class Checks:
    def __init__(
        self, engine: AsyncEngine, clock: Clock, cfg: AlertsConfig, quiet: tuple[str, ...] = ()
    ) -> None:
        """``quiet``: customers whose escalations raise nothing (the operator's own eval replays)."""
        self.quiet = quiet
        self.engine = engine
        self.clock = clock
        self.cfg = cfg
        self.low_balance = (
            parse_amount(cfg.wallet_low_balance, "wallet_low_balance") if cfg.wallet_low_balance else 0
        )

    async def run_once(self) -> int:
        """Check every condition; returns how many alerts were raised."""
        found: list[Found] = []
        async with self.engine.connect() as conn:
            for check in (
                self._approvals,
                self._escalations,
                self._deployments,
                self._budgets,
                self._wallets,
            ):
                found += await check(conn)
        raised = 0
        now = self.clock.now_us()
        for i in range(0, len(found), 100):
            async with writer(self.engine).begin() as conn:
                for kind, subject, payload, dedupe in found[i : i + 100]:
                    raised += await raise_alert(conn, now, kind, subject, payload, dedupe) is not None
        return raised

    async def _approvals(self, conn: Any) -> list[Found]:
        q = (
            select(W.c.id, W.c.wallet_id, W.c.token_id, W.c.amount, W.c.payee, W.c.expires_at_us)
            .where(W.c.status == "pending_approval", _not_raised(f"{APPROVAL_WAITING}:", W.c.id))
            .limit(_BATCH)
        )
        return [
            (
                APPROVAL_WAITING,
                r.id,
                {**r._asdict(), "amount_usd": format_usd(r.amount)},
                f"{APPROVAL_WAITING}:{r.id}",
            )
            for r in await conn.execute(q)
        ]

    async def _escalations(self, conn: Any) -> list[Found]:
        q = (
            select(E.c.id, E.c.agent, E.c.session_id, E.c.customer_id, E.c.reason, E.c.created_at_us)
            .where(
                E.c.status == "open",
                E.c.customer_id.not_in(self.quiet),
                _not_raised(f"{ESCALATION_WAITING}:", E.c.id),
            )
            .limit(_BATCH)
        )
        return [
            (ESCALATION_WAITING, r.id, r._asdict(), f"{ESCALATION_WAITING}:{r.id}")
            for r in await conn.execute(q)
        ]

    async def _deployments(self, conn: Any) -> list[Found]:
        q = (
            select(V.c.id, V.c.version, V.c.error, P.c.name, P.c.wallet_id, V.c.deployment_id)
            .join(P, P.c.id == V.c.deployment_id)
            .where(V.c.status == "failed", _not_raised(f"{DEPLOYMENT_FAILED}:", V.c.id))
            .limit(_BATCH)
        )
        return [
            (DEPLOYMENT_FAILED, r.name, r._asdict(), f"{DEPLOYMENT_FAILED}:{r.id}")
            for r in await conn.execute(q)
        ]

    async def _budgets(self, conn: Any) -> list[Found]:
        """The gateway's daily and monthly budgets (accounts ``budget_{scope}_{owner}_{period}``,
        funded with the budget, spent as debits) of the current period, over a threshold."""
        if not self.cfg.budget_thresholds:
            return []
        now = dt.datetime.fromtimestamp(self.clock.now_us() / 1_000_000, dt.UTC)
        day, month = now.strftime("d%Y%m%d"), now.strftime("m%Y%m")
        month_start = int(dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000
        q = select(L.c.id, L.c.customer_id, L.c.name, L.c.credits_posted, L.c.debits_posted).where(
            L.c.kind == "budget", L.c.id.like("budget\\_%", escape="\\"), L.c.created_at_us >= month_start
        )
        out: list[Found] = []
        for r in await conn.execute(q):
            rest, _, period = r.id.rpartition("_")
            if period not in (day, month) or r.credits_posted <= 0:
                continue
            _, scope, owner = rest.split("_", 2) if rest.count("_") >= 2 else ("", "", rest)
            pct = r.debits_posted * 100 // r.credits_posted
            for t in self.cfg.budget_thresholds:
                if pct >= t:
                    payload = {
                        "account_id": r.id,
                        "scope": scope,
                        "owner": owner,
                        "customer_id": r.customer_id,
                        "period": "daily" if period == day else "monthly",
                        "threshold": t,
                        "budget": r.credits_posted,
                        "spent": r.debits_posted,
                    }
                    out.append(
                        (BUDGET_THRESHOLD, f"{scope}:{owner}", payload, f"{BUDGET_THRESHOLD}:{r.id}:{t}")
                    )
        return out

    async def _wallets(self, conn: Any) -> list[Found]:
        if not self.low_balance:
            return []
        day = dt.datetime.fromtimestamp(self.clock.now_us() / 1_000_000, dt.UTC).strftime("%Y%m%d")
        available = L.c.credits_posted - L.c.debits_posted - L.c.debits_pending
        q = (
            select(WL.c.id, WL.c.owner, WL.c.customer_id, available.label("available"))
            .join(L, L.c.id == WL.c.account_id)
            .where(
                and_(available < self.low_balance, _not_raised(f"{WALLET_LOW_BALANCE}:", WL.c.id + f":{day}"))
            )
            .limit(_BATCH)
        )
        return [
            (
                WALLET_LOW_BALANCE,
                r.id,
                {**r._asdict(), "threshold": self.low_balance, "available_usd": format_usd(int(r.available))},
                f"{WALLET_LOW_BALANCE}:{r.id}:{day}",
            )
            for r in await conn.execute(q)
        ]

    async def run(self, interval_s: float) -> None:
        """Check every ``interval_s`` (the server's background loop)."""
        import asyncio
        import logging

        while True:
            try:
                await self.run_once()
            except Exception:  # a database hiccup: the next round checks again
                logging.getLogger("tollway.alerts").exception("alert checks failed")
            await asyncio.sleep(interval_s)
