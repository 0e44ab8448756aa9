"""The billing face on the request path: who is on which plan, what they may
use (:meth:`Billing.require`), and where a charge is paid from (:meth:`Billing.payer`).

Everything the request path needs arrives with the API key: its one point
read also reads the customer's subscription (plan, status, period, and a
``rev`` every billing change bumps). So a plan change applies on the next
request, in every process, with no restart, and a warm check reads nothing.

Quotas are ledger limits (:mod:`tollway.charge.limits`), so they are exact:
a feature's quota for a period is a ``quota`` account funded with the quota
(``sys_quotas``), and a request reserves its units there in the same ledger
batch as its payment (a :class:`~tollway.charge.hold.Cap` with ``units``). Neurons are money: what a
plan includes is a funding source drawn before credit and the prepaid balance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.billing.config import BillingSettings, configured_plans
from tollway.billing.credits import Credits
from tollway.billing.periods import CALENDAR, period_at
from tollway.billing.plans import NEURONS, REQUESTS, Plan
from tollway.billing.subscriptions import LIVE, Subscriptions
from tollway.charge.allocation import Allocations
from tollway.charge.allowance import GRANTS, DailyAllowance, utc_day
from tollway.charge.hold import Cap, Payer, Source
from tollway.charge.limits import Limit, LimitAccounts, since
from tollway.core.clock import Clock
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.money import parse_amount, parse_price, price_micros
from tollway.identity.keys import PlanStanding
from tollway.ledger import Ledger

log = logging.getLogger("tollway.billing")

QUOTAS = "sys_quotas"
UPGRADE = 'Upgrade with POST /v1/billing/checkout {"plan": "<plan>"} (GET /v1/billing/plans lists them).'


@dataclass(frozen=True, slots=True)
class Standing:
    """A customer's billing as the request path sees it."""

    customer_id: str
    plan: Plan
    status: str
    period_start_us: int
    period_end_us: int
    rev: int = 0
    rate: int = 0  # micro-USD per 1,000 neurons on this plan

    @property
    def live(self) -> bool:
        return self.status in LIVE


def not_entitled(s: Standing, feature: str) -> TollwayError:
    return TollwayError(
        ErrorType.PAYMENT,
        "feature_not_in_plan",
        f"the {s.plan.title} plan does not include {feature!r}. {UPGRADE}",
        param=feature,
        status=402,
    )


@dataclass
class Billing:
    settings: BillingSettings
    engine: AsyncEngine
    ledger: Ledger
    clock: Clock
    plans: dict[str, Plan] = field(init=False)
    subscriptions: Subscriptions = field(init=False)
    credits: Credits = field(init=False)

    def __post_init__(self) -> None:
        self.plans = configured_plans(self.settings)
        self.default_plan = self.settings.billing.default_plan
        default_rate = parse_amount(self.settings.inference.usd_per_1000_neurons)
        self.rates = {
            k: parse_amount(p.usd_per_1000_neurons) if p.usd_per_1000_neurons else default_rate
            for k, p in self.plans.items()
        }
        self.subscriptions = Subscriptions(
            self.engine, self.ledger, self.clock, self.plans, self.default_plan
        )
        self.credits = Credits(self.engine, self.ledger, self.clock, self.subscriptions)
        self.daily = DailyAllowance(self.ledger, self.clock, 0)
        self.funded = Allocations(self.ledger)  # the funding sources: included neurons, overage
        self.limits = LimitAccounts(self.ledger, self.clock)  # the quotas
        self._grants: dict[str, tuple[int, tuple[Source, ...]]] = {}  # customer → (rev, its live grants)
        self._periods: dict[int, tuple[int, int]] = {}  # anchor → its current period
        self._caps: dict[tuple[str, int, int], Cap] = {}  # (quota account, amount, limit) → its cap
        self._day = ""

    # ---------------------------------------------------------------- standing

    def standing(self, customer_id: str, row: PlanStanding | None) -> Standing:
        """From the subscription read with the API key (:data:`KEY_JOIN`; ``None``: no row).
        A canceled subscription, or a plan no longer configured, is the default plan."""
        now = self.clock.now_us()
        if row is None:
            plan_key, status, start, end, anchor, rev = self.default_plan, "active", 0, 0, CALENDAR, 0
        else:
            plan_key, status, start, end, anchor, rev = row
        plan = self.plans.get(plan_key) if status != "canceled" else None
        if plan is None:
            plan, status = self.plans[self.default_plan], "active"
        if not start <= now < end:
            start, end = self._period(anchor, now)
        return Standing(customer_id, plan, status, start, end, rev, self.rates[plan.lookup_key])

    def _period(self, anchor: int, now: int) -> tuple[int, int]:
        """:func:`period_at`, cached per anchor while the period lasts."""
        hit = self._periods.get(anchor)
        if hit is not None and hit[0] <= now < hit[1]:
            return hit
        if len(self._periods) > 10_000:
            self._periods.clear()
        p = self._periods[anchor] = period_at(anchor, now)
        return p

    async def standing_of(self, customer_id: str) -> Standing:
        s = await self.subscriptions.get(customer_id)
        row = PlanStanding(s.plan, s.status, s.period_start_us, s.period_end_us, s.anchor_us, s.rev)
        return self.standing(customer_id, row)

    # ------------------------------------------------------------ entitlements

    async def require(self, s: Standing, feature: str, amount: int = 1) -> tuple[Cap, ...]:
        """May ``s`` use ``amount`` of ``feature`` now? Raises 402
        ``feature_not_in_plan``; returns the quota caps the charge must reserve
        with its payment (the ledger then decides, exactly, in the same batch).
        Once the period's accounts are funded, this reads nothing."""
        plan = s.plan
        if feature == REQUESTS:
            caps = []
            if plan.daily_requests:
                caps.append(await self._quota(s, feature, amount, plan.daily_requests, daily=True))
            if plan.included_requests:
                caps.append(await self._quota(s, feature, amount, plan.included_requests, daily=False))
            return tuple(caps)
        if feature == NEURONS:
            return ()  # money: paid through the funding sources (see payer)
        if not plan.has(feature):
            raise not_entitled(s, feature)
        quota = plan.quotas.get(feature)
        if quota is None:
            return ()
        return (await self._quota(s, feature, amount, quota, daily=False),)

    async def check(self, s: Standing, feature: str, amount: int = 1) -> None:
        """:meth:`require`, and for a quota, that ``amount`` is left now (nothing is used)."""
        for cap in await self.require(s, feature, amount):
            if (await self.ledger.get_account(cap.account_id)).available < amount:
                raise cap.refusal(0)

    async def quota_status(self, s: Standing) -> list[dict[str, Any]]:
        """Each quota of the plan: its limit, what is used and what is left."""
        out = []
        specs = [(REQUESTS, s.plan.daily_requests, True), (REQUESTS, s.plan.included_requests, False)]
        specs += [(f, n, False) for f, n in s.plan.quotas.items()]
        for feature, limit, daily in specs:
            if not limit:
                continue
            cap = await self._quota(s, feature, 0, limit, daily=daily)
            a = await self.ledger.get_account(cap.account_id)
            out.append(
                {
                    "feature": feature,
                    "period": "day" if daily else "billing_period",
                    "limit": limit,
                    "used": a.debits_posted,
                    "held": a.debits_pending,
                    "remaining": a.available,
                }
            )
        return out

    async def consume(self, s: Standing, feature: str, amount: int = 1) -> None:
        """Use ``amount`` of a quota feature outside a charge (exact: one ledger transfer)."""
        for cap in await self.require(s, feature, amount):
            try:
                await self.ledger.transfer(cap.account_id, QUOTAS, amount, description=f"{feature} used")
            except TollwayError as e:
                if e.code == "insufficient_funds":
                    raise cap.refusal(0) from None
                raise

    async def _quota(self, s: Standing, feature: str, amount: int, quota: int, *, daily: bool) -> Cap:
        self._new_day()
        tag = "r" if feature == REQUESTS else hashlib.sha256(feature.encode()).hexdigest()[:8]
        period = self.limits.periods()["daily"] if daily else since(s.period_start_us)
        acct = f"q_{s.customer_id}_{tag}_{period}"
        cap = self._caps.get((acct, amount, quota))
        if cap is not None:
            return cap
        what = "daily quota" if daily else "quota this period"
        cap = await self.limits.cap(
            Limit(
                acct,
                quota,
                f"{s.plan.title} plan's {feature} {what}",
                QUOTAS,
                s.customer_id,
                kind="quota",
                name=f"{feature} {what}",
                units=amount,
                code="quota_exceeded",
                hint=UPGRADE,
            )
        )
        self._caps[(acct, amount, quota)] = cap
        return cap

    def _new_day(self) -> None:
        day = utc_day(self.clock.now_us())
        if day != self._day:
            self._day = day
            self.funded.forget()
            self._caps = {}

    # ----------------------------------------------------------------- funding

    async def payer(self, s: Standing, prepaid_account_id: str) -> Payer:
        """Where a charge is drawn from, in order: today's free neurons, the
        period's included neurons, credit grants, the prepaid balance, then, on
        a live plan that bills overage, the period's overage (invoiced)."""
        plan = s.plan
        sources: list[Source] = []
        if plan.daily_neurons:
            amount = price_micros(plan.daily_neurons * 1000, s.rate)
            sources.append(Source(await self.daily.ensure(s.customer_id, amount), payee=GRANTS))
        if plan.included_neurons and s.live:
            self._new_day()
            acct = f"incl_{s.customer_id}_{s.period_start_us // 1_000_000}"
            amount = price_micros(plan.included_neurons * 1000, s.rate)
            sources.append(
                Source(
                    await self.funded.ensure(
                        acct, "included", s.customer_id, amount, GRANTS, "included neurons"
                    ),
                    payee=GRANTS,
                )
            )
        if s.rev:
            sources.extend(await self._grant_sources(s))
        sources.append(Source(prepaid_account_id))
        if plan.overage and s.live:
            acct = f"ovg_{s.customer_id}_{s.period_start_us // 1_000_000}"
            await self.funded.ensure(acct, "receivable", s.customer_id, 0, GRANTS, "overage, invoiced")
            sources.append(Source(acct, unbounded=True))
        return Payer(prepaid_account_id, s.customer_id, tuple(sources))

    async def _grant_sources(self, s: Standing) -> tuple[Source, ...]:
        cached = self._grants.get(s.customer_id)
        if cached is not None and cached[0] == s.rev:
            return cached[1]
        grants = await self.credits.list(s.customer_id, live_only=True)
        now = self.clock.now_us()
        out = tuple(
            Source(g.account_id, payee="sys_revenue" if g.category == "paid" else GRANTS)
            for g in grants
            if g.expires_at_us is None or g.expires_at_us > now
        )
        if len(self._grants) > 100_000:  # bounded: a dropped entry is read again on use
            self._grants.clear()
        self._grants[s.customer_id] = (s.rev, out)
        return out

    def refused(self, s: Standing, err: TollwayError) -> TollwayError:
        """A charge the funding could not cover, said in the plan's terms (the
        code stays ``insufficient_funds``)."""
        if err.code != "insufficient_funds":
            return err
        included = (
            "free and included neurons, credit"
            if s.plan.daily_neurons or s.plan.included_neurons
            else "credit"
        )
        return TollwayError(
            ErrorType.PAYMENT,
            "insufficient_funds",
            f"on the {s.plan.title} plan, the {included} and prepaid balance cannot cover this request;"
            f" nothing was charged. Top up the prepaid balance, or {UPGRADE[0].lower()}{UPGRADE[1:]}",
            param=NEURONS,
            status=402,
        )

    # ------------------------------------------------------------ background

    async def tick(self) -> tuple[int, int, int]:
        """Renew ended local subscriptions, expire credit grants, and roll up
        today's usage (and yesterday's, until it is final)."""
        from tollway.billing.usage import rollup_day

        renewed, expired = await self.subscriptions.renew_due(), await self.credits.expire_due()
        cfg = self.settings.billing
        today = utc_date(self.clock.now_us())
        rows = 0
        for day in (today - dt.timedelta(days=1), today):
            rows += await rollup_day(
                self.engine, self.clock, day, k=cfg.anomaly_factor, trailing=cfg.anomaly_days
            )
        return renewed, expired, rows

    async def run(self, interval_s: float) -> None:
        """:meth:`tick` forever (in the server's lifespan); a failed tick is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)  # not at start-up: a short-lived process has nothing due
            try:
                await self.tick()
            except Exception:
                log.exception("billing tick failed; retrying in %ss", interval_s)


def plan_dict(p: Plan, rate: int) -> dict[str, Any]:
    return {
        "object": "plan",
        "lookup_key": p.lookup_key,
        "name": p.title,
        "price": parse_price(p.price),
        "trial_days": p.trial_days,
        "daily_neurons": p.daily_neurons,
        "daily_requests": p.daily_requests,
        "included_neurons": p.included_neurons,
        "included_requests": p.included_requests,
        "usd_micros_per_1000_neurons": rate,
        "overage": p.overage,
        "features": p.features,
        "quotas": p.quotas,
    }


def utc_date(us: int) -> dt.date:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).date()
