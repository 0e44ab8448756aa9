"""The eval loop's figures for the console (tollway.evals, read through ``rt.evals``):
each agent's latest runs with their deterministic check counts, a run's
grades, and version comparisons (B - A)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.schema import eval_grades as G
from tollway.evals.grader import SCORES
from tollway.evals.service import Evals

RUNS = 50  # the latest runs listed on the Agents page
PER_AGENT = 20  # the runs looked through for an agent's latest graded run


def check_counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    """The deterministic checks of graded sessions (tollway.evals.checks), counted."""
    return {
        "sessions": len(checks),
        "passed": sum(bool(c.get("passed")) for c in checks),
        "guardrail_hits": sum(len(c.get("guardrail_hits") or []) for c in checks),
        "tool_errors": sum(len(c.get("tool_errors") or []) for c in checks),
        "refusals": sum(int(c.get("refusals") or 0) for c in checks),
        "budget_exhausted": sum(bool(c.get("budget_exhausted")) for c in checks),
    }


async def _counts(engine: AsyncEngine, run_ids: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (run, arm): its grades' check counts, in one read."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    if run_ids:
        q = select(G.c.run_id, G.c.arm, G.c.checks).where(G.c.run_id.in_(run_ids))
        async with engine.connect() as conn:
            for run_id, arm, checks in await conn.execute(q):
                by[(run_id, arm)].append(json.loads(checks))
    return {k: check_counts(v) for k, v in by.items()}


def _row(r: dict[str, Any], counts: dict[tuple[str, str], dict[str, int]]) -> dict[str, Any]:
    s = r["summary"]
    out = {
        k: r[k]
        for k in ("id", "kind", "agent", "version", "version_b", "status", "grader", "cost", "created_at_us")
    }
    out["error"] = s.get("error")
    out["sampled"] = s.get("sampled", 0)
    empty = check_counts([])
    if r["kind"] == "compare":
        for arm in ("a", "b"):
            arm_s = s.get(arm) or {}
            out[arm] = {"graded": arm_s.get("graded", 0), "scores": _scores(arm_s.get("scores"))}
            out[f"checks_{arm}"] = counts.get((r["id"], arm), empty)
        delta = s.get("delta") or {}
        out["delta"] = {k: delta.get(k) for k in (*SCORES, "checks_passed")}
    else:
        out["graded"] = s.get("graded", 0)
        out["escalated"] = s.get("escalated", 0)
        out["scores"] = _scores(s.get("scores"))
        out["checks"] = counts.get((r["id"], "a"), empty)
    return out


def _scores(scores: dict[str, Any] | None) -> dict[str, Any]:
    """Every score named (None: no grade gave it), so a failed run renders too."""
    return {k: (scores or {}).get(k) for k in SCORES}


async def runs(evals: Evals, agent: str | None = None, limit: int = RUNS) -> list[dict[str, Any]]:
    """The latest runs and comparisons (newest first), with their check counts."""
    rs = await evals.runs(agent, limit=limit)
    counts = await _counts(evals.engine, [r["id"] for r in rs])
    return [_row(r, counts) for r in rs]


async def latest(evals: Evals, agents: list[str]) -> list[dict[str, Any]]:
    """Each agent's latest finished run (not a comparison), if it has one."""
    out = []
    for name in agents:
        done = [
            r for r in await evals.runs(name, limit=PER_AGENT) if r["kind"] == "run" and r["status"] == "done"
        ]
        if done:
            counts = await _counts(evals.engine, [done[0]["id"]])
            out.append(_row(done[0], counts))
    return out


async def run(evals: Evals, run_id: str) -> dict[str, Any]:
    """One run (404 ``eval_run_not_found``) with its grades, each with its check counts."""
    r = await evals.show(run_id)
    grades = r.pop("grades")
    counts = {
        (r["id"], arm): check_counts([g["checks"] for g in grades if g["arm"] == arm]) for arm in ("a", "b")
    }
    return {**_row(r, counts), "grades": grades}
