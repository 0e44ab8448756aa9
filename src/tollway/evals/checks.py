"""The deterministic checks on a session: what its records say, no model asked."""

from __future__ import annotations

from typing import Any

# The agents' fixed replies (tollway.agents.service) and flags.
BLOCKED = "I cannot share that answer."
BUDGET = "This conversation has used up its budget."


def deterministic(messages: list[dict[str, Any]], tool_log: list[dict[str, Any]]) -> dict[str, Any]:
    """Guardrail hits, tool errors, refusals, budget exhaustion and escalation,
    from the session's messages (with their ``meta``) and its tool log."""
    guardrail: list[str] = []
    refusals = 0
    budget = False
    escalations = 0
    for m in messages:
        meta = m.get("meta") or {}
        flags = [str(f) for f in meta.get("flags") or []]
        guardrail += [f for f in flags if f not in ("budget_exhausted", "invalid_tool_call")]
        if "budget_exhausted" in flags or (m["role"] == "assistant" and m["content"] == BUDGET):
            budget = True
        if m["role"] == "assistant" and m["content"] == BLOCKED:
            guardrail.append("blocked_output")  # the answer matched a blocked pattern
        if m["role"] == "assistant" and meta.get("refusal"):
            refusals += 1
        if meta.get("escalation") and m["role"] == "assistant":
            escalations += 1
    tool_errors = [
        {"tool": t["tool"], "status": t["status"], "error": t.get("error")}
        for t in tool_log
        if t.get("status") != "ok"
    ]
    return {
        "guardrail_hits": guardrail,
        "tool_calls": len(tool_log),
        "tool_errors": tool_errors,
        "refusals": refusals,
        "budget_exhausted": budget,
        "escalations": escalations,
        "passed": not guardrail and not tool_errors and not budget,
    }
