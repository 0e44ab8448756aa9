"""``tollway alerts list|ack``: the alerts raised (tollway.observe.alerts)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table
from tollway.runtime import Runtime

alerts_app = typer.Typer(
    help="Alerts: budgets, anomalies, low wallets, waiting approvals...", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@alerts_app.command("list")
def list_(
    kind: str | None = typer.Option(None, "--kind", help="Only this kind, e.g. budget_threshold."),
    status: str | None = typer.Option(None, "--status", help="open or acked."),
    subject: str | None = typer.Option(None, "--subject", help="Only alerts about this."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
    as_json: bool = JsonOpt,
) -> None:
    """Alerts, newest first, with the state of their deliveries."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        found = await rt.alerts.list(kind=kind, status=status, subject=subject, limit=limit)
        return [a.to_dict() for a in found]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "alerts",
        ["id", "created (UTC)", "kind", "subject", "status", "deliveries"],
        [
            [
                r["id"],
                _when(r["created_at_us"]),
                r["kind"],
                r["subject"],
                r["status"],
                ", ".join(f"{d['status']} ({d['attempts']})" for d in r["deliveries"]) or "-",
            ]
            for r in rows
        ],
    )


@alerts_app.command("ack")
def ack(
    alert_id: str = typer.Argument(..., help="The alert's id (alt_...)."),
    by: str = typer.Option("cli", "--by", help="Who acknowledges it."),
    as_json: bool = JsonOpt,
) -> None:
    """Acknowledge an alert."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return (await rt.alerts.ack(alert_id, by)).to_dict()

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"acknowledged {r['id']} ({r['kind']} {r['subject']})")
