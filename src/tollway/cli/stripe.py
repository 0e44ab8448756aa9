"""``tollway stripe``: sync the catalog, push usage, reconcile a day, status."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, fail, out, table
from tollway.core.errors import invalid
from tollway.runtime import Runtime

if TYPE_CHECKING:
    from tollway.billing.stripe.service import StripeBilling

stripe_app = typer.Typer(
    help="Stripe billing (on when STRIPE_API_KEY is set; see docs/stripe.md).", no_args_is_help=True
)
app.add_typer(stripe_app, name="stripe")


def _sb(rt: Runtime) -> StripeBilling:
    if rt.stripe is None:
        from tollway.billing.stripe.service import not_configured

        raise not_configured()
    return rt.stripe


@stripe_app.command("sync")
def sync(as_json: bool = JsonOpt) -> None:
    """Create or update Stripe's products, prices, meter and features from the plans (idempotent)."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await _sb(rt).sync()

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json(
            {"object": "stripe_sync", "changed": sum(r["action"] != "unchanged" for r in rows), "data": rows}
        )
        return
    table("stripe sync", ["kind", "tollway", "stripe", "action"], [list(r.values()) for r in rows])
    changed = sum(r["action"] != "unchanged" for r in rows)
    out.print(f"{changed} change(s)" if changed else "nothing to change: Stripe matches the plans")


@stripe_app.command("reconcile")
def reconcile(
    day: str = typer.Option(..., "--day", help="The UTC day, YYYY-MM-DD."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report drift, fix nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Compare a day's usage with Stripe's meter; fix any drift with adjustment meter events."""
    try:
        d = dt.date.fromisoformat(day)
    except ValueError:
        fail(invalid("invalid_day", "day must be YYYY-MM-DD", "day"), as_json)

    async def go(rt: Runtime) -> dict[str, Any]:
        return await _sb(rt).reconcile(d, fix=not dry_run)

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
        return
    table(
        f"reconcile {r['day']} (milli-neurons)",
        ["customer", "stripe customer", "tollway", "stripe", "drift", "fixed"],
        [
            [
                x["customer_id"],
                x["stripe_customer"],
                x["local"],
                x["stripe"],
                x["drift"],
                "yes" if x["fixed"] else "",
            ]
            for x in r["rows"]
        ],
    )
    out.print(f"{r['drifting']} of {r['customers']} customer(s) drifted; {r['fixed']} fixed")


@stripe_app.command("push")
def push(as_json: bool = JsonOpt) -> None:
    """Push the usage due to Stripe's meter now (the server does this in the background)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        p = _sb(rt).pusher()
        from tollway.billing.stripe.meter import Retry

        try:
            sent = await p.drain()
            error = None
        except Retry as e:
            sent, error = p.stats.sent, e.why
        return {"object": "stripe_meter_push", "sent": sent, "error": error, **(await p.status())}

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(
            f"sent {r['sent']} meter event(s); {r['backlog']} waiting"
            + (f"; {r['error']}" if r["error"] else "")
        )
    if r["error"]:
        raise typer.Exit(1)


@stripe_app.command("status")
def status(as_json: bool = JsonOpt) -> None:
    """The meter push: how far it got, what waits, what Stripe refused."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await _sb(rt).pusher().status()

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
        return
    at = r["cursor_created_at_us"]
    when = (
        "never"
        if at is None
        else dt.datetime.fromtimestamp(at / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    out.print(
        f"meter push ({r['mode']}): through {when}; {r['backlog']} event(s) waiting; {r['rejected']} refused"
    )
