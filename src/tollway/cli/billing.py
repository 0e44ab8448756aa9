"""``tollway plans``, ``subscription``, ``credits``, ``invoice`` and ``rollups``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from tollway.billing import usage as U
from tollway.billing.preview import preview
from tollway.billing.service import plan_dict
from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table, usd
from tollway.runtime import Runtime

subscription_app = typer.Typer(
    help="Customers' subscriptions (plans, status, periods).", no_args_is_help=True
)
credits_app = typer.Typer(
    help="Prepaid credit grants (drawn before the prepaid balance).", no_args_is_help=True
)
invoice_app = typer.Typer(help="Invoices.", no_args_is_help=True)
rollups_app = typer.Typer(help="Daily usage rollups and anomaly flags.", no_args_is_help=True)
app.add_typer(subscription_app, name="subscription")
app.add_typer(credits_app, name="credits")
app.add_typer(invoice_app, name="invoice")
app.add_typer(rollups_app, name="rollups")

CustomerArg = typer.Argument(..., help="The customer's id (cus_...).")


@app.command()
def plans(as_json: bool = JsonOpt) -> None:
    """The plans of tollway.toml ([[billing.plans]])."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        b = rt.billing
        return [plan_dict(p, b.rates[k]) for k, p in b.plans.items()]

    rows = _with_runtime(as_json, go, migrate=False)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "plans",
        [
            "lookup key",
            "name",
            "price",
            "daily neurons",
            "included neurons",
            "requests/day",
            "overage",
            "features",
        ],
        [
            [
                p["lookup_key"],
                p["name"],
                usd(p["price"]),
                p["daily_neurons"],
                p["included_neurons"],
                p["daily_requests"] or "",
                "yes" if p["overage"] else "no",
                ", ".join(p["features"]),
            ]
            for p in rows
        ],
    )


def _print_sub(s: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(s)
        return
    end = dt.datetime.fromtimestamp(s["current_period_end_us"] / 1e6, dt.UTC).isoformat(timespec="seconds")
    extra = f"; downgrades to {s['pending_plan']}" if s["pending_plan"] else ""
    extra += "; cancels at the period's end" if s["cancel_at_period_end"] else ""
    out.print(f"{s['customer_id']}: [bold]{s['plan']}[/] ({s['status']}), period ends {end}{extra}")


@subscription_app.command("show")
def subscription_show(customer: str = CustomerArg, as_json: bool = JsonOpt) -> None:
    """A customer's subscription."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return (await rt.billing.subscriptions.get(customer)).to_dict()

    _print_sub(_with_runtime(as_json, go), as_json)


@subscription_app.command("set")
def subscription_set(
    customer: str = CustomerArg,
    plan: str = typer.Argument(..., help="The plan's lookup key."),
    as_json: bool = JsonOpt,
) -> None:
    """Subscribe CUSTOMER to PLAN, or change plan (an upgrade prorates now, a downgrade waits)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return (await rt.billing.subscriptions.subscribe(customer, plan)).to_dict()

    _print_sub(_with_runtime(as_json, go), as_json)


@subscription_app.command("cancel")
def subscription_cancel(
    customer: str = CustomerArg,
    now: bool = typer.Option(False, "--now", help="Cancel at once, not at the period's end."),
    as_json: bool = JsonOpt,
) -> None:
    """Cancel a customer's subscription (it falls back to the default plan)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return (await rt.billing.subscriptions.cancel(customer, at_period_end=not now)).to_dict()

    _print_sub(_with_runtime(as_json, go), as_json)


@credits_app.command("grant")
def credits_grant(
    customer: str = CustomerArg,
    amount: str = typer.Argument(..., help='"$5" or micro-USD.'),
    paid: bool = typer.Option(False, "--paid", help="A paid top-up (default: a promotional grant)."),
    priority: int = typer.Option(50, help="0-100; lower is drawn first."),
    expires_days: int | None = typer.Option(None, "--expires-days", help="Expires after this many days."),
    name: str = typer.Option("", help="Shown on the grant."),
    as_json: bool = JsonOpt,
) -> None:
    """Grant prepaid credit to CUSTOMER."""

    async def go(rt: Runtime) -> dict[str, Any]:
        exp = rt.clock.now_us() + expires_days * 86_400_000_000 if expires_days else None
        g = await rt.billing.credits.grant(
            customer,
            amount,
            category="paid" if paid else "promotional",
            priority=priority,
            name=name,
            expires_at_us=exp,
        )
        return g.to_dict(remaining=g.amount)

    g = _with_runtime(as_json, go)
    if as_json:
        emit_json(g)
    else:
        out.print(f"granted {usd(g['amount'])} ({g['category']}) to {customer}: {g['id']}")


@credits_app.command("list")
def credits_list(customer: str = CustomerArg, as_json: bool = JsonOpt) -> None:
    """A customer's credit grants, in the order they are drawn."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        gs = await rt.billing.credits.list(customer)
        return [g.to_dict(remaining=(await rt.ledger.get_account(g.account_id)).available) for g in gs]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        f"credit grants of {customer}",
        ["id", "category", "priority", "amount", "remaining", "expired"],
        [
            [g["id"], g["category"], g["priority"], usd(g["amount"]), usd(g["remaining"]), g["expired"]]
            for g in rows
        ],
    )


@invoice_app.command("preview")
def invoice_preview(
    customer: str = typer.Option(..., "--customer", help="The customer's id."), as_json: bool = JsonOpt
) -> None:
    """The invoice preview of a customer's current period."""
    p = _with_runtime(as_json, lambda rt: preview(rt.billing, customer))
    if as_json:
        emit_json(p)
        return
    table(
        f"invoice preview: {customer} on {p['plan']} ({p['status']})",
        ["line", "description", "amount"],
        [[ln["type"], ln["description"], usd(ln["amount"])] for ln in p["lines"]]
        + [["", "total", usd(p["total"])]],
    )
    u = p["usage"]
    paid = u["paid_from"]
    out.print(
        f"this period: {u['neurons']:.3f} neurons, {usd(u['charged'])} charged"
        f" (free {usd(paid['free_daily'])}, included {usd(paid['included'])},"
        f" overage {usd(paid['overage'])});"
        f" credit left {usd(p['credit_remaining'])}"
    )


@rollups_app.command("run")
def rollups_run(
    day: str = typer.Option(..., "--day", help="UTC day, YYYY-MM-DD."), as_json: bool = JsonOpt
) -> None:
    """Rebuild one day's rollups from the usage events, and flag anomalies."""

    async def go(rt: Runtime) -> int:
        cfg = rt.settings.billing
        return await U.rollup_day(
            rt.engine, rt.clock, U.parse_day(day), k=cfg.anomaly_factor, trailing=cfg.anomaly_days
        )

    n = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "usage_rollup_run", "day": day, "rows": n})
    else:
        out.print(f"rolled up {day}: {n} rows")


@rollups_app.command("list")
def rollups_list(
    start: str | None = typer.Option(None, help="First UTC day (default: 30 days ago)."),
    end: str | None = typer.Option(None, help="Last UTC day (default: today)."),
    customer: str | None = typer.Option(None, "--customer", help="Only this customer."),
    anomalies: bool = typer.Option(False, "--anomalies", help="Only days flagged as anomalies."),
    as_json: bool = JsonOpt,
) -> None:
    """Daily usage per customer, feature and model."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        today = dt.datetime.fromtimestamp(rt.clock.now_us() / 1e6, dt.UTC).date()
        a = U.parse_day(start, "start") if start else today - dt.timedelta(days=30)
        b = U.parse_day(end, "end") if end else today
        return await U.rollups(rt.engine, start=a, end=b, customer_id=customer, anomalies_only=anomalies)

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "usage rollups (UTC days)",
        ["day", "customer", "feature", "model", "events", "quantity", "amount", "anomaly"],
        [
            [
                r["day"],
                r["customer_id"] or "",
                r["feature"],
                r["model"] or "",
                r["events"],
                r["quantity"],
                usd(r["amount"]),
                "!" if r["anomaly"] else "",
            ]
            for r in rows
        ],
    )
