"""``tollway schedules list|cancel``: persisted timers, for operators."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table
from tollway.runtime import Runtime

schedules_app = typer.Typer(help="Schedules: persisted timers (agents' alarms).", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@schedules_app.command("list")
def list_(
    owner: str = typer.Option("", "--owner", help="Only owners starting with this, e.g. agent:support:"),
    all_: bool = typer.Option(False, "--all", help="Include done, failed and cancelled ones."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000),
    as_json: bool = JsonOpt,
) -> None:
    """Open schedules (pending or running), soonest first."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        found = await rt.scheduler.list_all(owner_prefix=owner, include_done=all_, limit=limit)
        return [s.to_dict() for s in found]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "schedules",
        ["id", "owner", "task", "when", "next run (UTC)", "status", "attempts", "last error"],
        [
            [
                r["id"],
                r["owner"],
                r["task"],
                r["cron"] or r["kind"],
                _when(r["next_run_us"]),
                r["status"],
                f"{r['attempts']}/{r['max_attempts']}",
                r["last_error"],
            ]
            for r in rows
        ],
    )


@schedules_app.command("cancel")
def cancel(
    schedule_id: str = typer.Argument(..., help="The schedule's id (sched_...)."), as_json: bool = JsonOpt
) -> None:
    """Cancel a schedule: it will not run (again)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        s = await rt.scheduler.find(schedule_id)
        return (await rt.scheduler.cancel(s.owner, s.id)).to_dict()

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"cancelled {r['id']} ({r['task']} for {r['owner']})")
