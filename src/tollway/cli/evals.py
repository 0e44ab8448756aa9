"""``tollway evals run|show|compare|export``: the eval loop (tollway.evals)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table
from tollway.runtime import Runtime

evals_app = typer.Typer(
    help="Evals: grade agent sessions, compare versions, export examples.", no_args_is_help=True
)
app.add_typer(evals_app, name="evals")

Share = typer.Option(
    None, "--share", min=0.0, max=1.0, help="The random share sampled ([evals] sample_share)."
)
Seed = typer.Option(None, "--seed", help="Seed the random sample (repeatable runs).")


def _show(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(r)
        return
    s = r["summary"]
    out.print(f"{r['kind']} {r['id']} of {r['agent']}: {r['status']}, cost {r['cost']} µUSD")
    out.print(json.dumps(s, indent=2))
    table(
        "grades",
        ["session", "arm", "version", "escalated", "helpfulness", "safety", "groundedness", "checks"],
        [
            [
                g["session_id"],
                g["arm"],
                g["version"],
                "yes" if g["escalated"] else "",
                g["helpfulness"],
                g["safety"],
                g["groundedness"],
                "pass" if g["checks"]["passed"] else "fail",
            ]
            for g in r["grades"]
        ],
    )


@evals_app.command("run")
def run(
    agent: str = typer.Argument(..., help="The agent."),
    version: int | None = typer.Option(None, "--version", help="Only sessions of this definition version."),
    share: float | None = Share,
    seed: int | None = Seed,
    as_json: bool = JsonOpt,
) -> None:
    """Sample the agent's sessions (every escalated one, and a random share) and grade them."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.evals.run(agent, version=version, share=share, seed=seed)

    _show(_with_runtime(as_json, go), as_json)


@evals_app.command("show")
def show(
    run_id: str | None = typer.Argument(None, help="A run's id (evr_...); none: the latest runs."),
    agent: str | None = typer.Option(None, "--agent", help="List only this agent's runs."),
    as_json: bool = JsonOpt,
) -> None:
    """One run with its grades, or the latest runs."""
    if run_id is not None:

        async def one(rt: Runtime) -> dict[str, Any]:
            return await rt.evals.show(run_id)

        _show(_with_runtime(as_json, one), as_json)
        return

    async def many(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.evals.runs(agent)

    rows = _with_runtime(as_json, many)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "eval runs",
        ["id", "kind", "agent", "version", "version b", "status", "graded", "cost"],
        [
            [
                r["id"],
                r["kind"],
                r["agent"],
                r["version"],
                r["version_b"],
                r["status"],
                r["summary"].get("graded", r["summary"].get("a", {}).get("graded")),
                r["cost"],
            ]
            for r in rows
        ],
    )


@evals_app.command("compare")
def compare(
    agent: str = typer.Argument(..., help="The agent."),
    version_a: int = typer.Argument(..., help="The version whose sessions are sampled."),
    version_b: int = typer.Argument(..., help="The version their user messages are replayed against."),
    share: float | None = Share,
    seed: int | None = Seed,
    as_json: bool = JsonOpt,
) -> None:
    """Replay version A's sampled sessions on version B; grade both; the deltas B - A."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.evals.compare(agent, version_a, version_b, share=share, seed=seed)

    _show(_with_runtime(as_json, go), as_json)


@evals_app.command("export")
def export(
    agent: str | None = typer.Option(None, "--agent", help="Only this agent's examples."),
    as_json: bool = JsonOpt,
) -> None:
    """Escalation answers with their conversations, as JSONL (OpenAI fine-tuning chat format)."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.evals.examples.export(agent)

    for line in _with_runtime(as_json, go):
        sys.stdout.write(json.dumps(line) + "\n")
