"""The invoice preview of a customer's current period, from the ledger.

Lines, like Stripe's upcoming invoice: the subscription's price for the next
period (what renewing will charge) and the usage billed in arrears this
period (the overage account's debits). A summary of the period's usage says
where every charge was paid from: the free daily allocation, the included
neurons, credit grants, the prepaid balance, or overage.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tollway.billing.service import Billing
from tollway.core.errors import TollwayError
from tollway.core.money import parse_price
from tollway.core.schema import ledger_accounts as A
from tollway.core.schema import usage_events as U


async def preview(billing: Billing, customer_id: str) -> dict[str, Any]:
    sub = await billing.subscriptions.get(customer_id)
    s = await billing.standing_of(customer_id)
    plan = s.plan
    start, end = s.period_start_us, s.period_end_us
    sec = start // 1_000_000
    ledger = billing.ledger

    async def debits(acct: str) -> int:
        try:
            a = await ledger.get_account(acct)
        except TollwayError:
            return 0
        return a.debits_posted

    overage = await debits(f"ovg_{customer_id}_{sec}")
    included_used = await debits(f"incl_{customer_id}_{sec}")
    async with billing.engine.connect() as conn:
        q = (
            select(U.c.meter, U.c.model, func.count(), func.sum(U.c.quantity), func.sum(U.c.amount))
            .where(U.c.customer_id == customer_id, U.c.created_at_us >= start, U.c.created_at_us < end)
            .group_by(U.c.meter, U.c.model)
            .order_by(U.c.meter, U.c.model)
        )
        usage = [
            {"feature": m, "model": model, "events": n, "quantity": int(qty or 0), "amount": int(amt or 0)}
            for m, model, n, qty, amt in await conn.execute(q)
        ]
        free = (
            await conn.execute(
                select(func.coalesce(func.sum(A.c.debits_posted), 0)).where(
                    A.c.customer_id == customer_id,
                    A.c.kind == "free_allowance",
                    A.c.created_at_us >= start,
                    A.c.created_at_us < end,
                )
            )
        ).scalar_one()
    grants = await billing.credits.list(customer_id, live_only=True)
    credit_left = 0
    for g in grants:
        credit_left += max((await ledger.get_account(g.account_id)).available, 0)
    lines: list[dict[str, Any]] = []
    price = parse_price(plan.price)
    renews = sub.status != "canceled" and not sub.cancel_at_period_end
    next_plan = billing.plans.get(sub.pending_plan or "") or plan
    if renews and parse_price(next_plan.price):
        lines.append(
            {
                "type": "subscription",
                "description": f"{next_plan.title} plan, next period",
                "period_start_us": end,
                "amount": parse_price(next_plan.price),
            }
        )
    if overage:
        lines.append(
            {
                "type": "overage",
                "description": f"usage beyond what {plan.title} includes, this period",
                "period_start_us": start,
                "period_end_us": end,
                "amount": overage,
            }
        )
    neurons = [u for u in usage if u["feature"] == "neurons"]
    return {
        "object": "invoice_preview",
        "customer_id": customer_id,
        "plan": plan.lookup_key,
        "status": s.status,
        "price": price,
        "period_start_us": start,
        "period_end_us": end,
        "pending_plan": sub.pending_plan,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "lines": lines,
        "total": sum(line["amount"] for line in lines),
        "currency": "usd",
        "unit": "micro",
        "usage": {
            "neurons": sum(u["quantity"] for u in neurons) / 1000,
            "charged": sum(u["amount"] for u in neurons),
            "paid_from": {
                "free_daily": int(free),
                "included": included_used,
                "overage": overage,
            },
            "by_feature": usage,
        },
        "credit_remaining": credit_left,
        "stripe_subscription_id": sub.stripe_subscription_id,
    }
