"""``tollway agents list|versions|ingest|sessions|show|usage|escalations|reply``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tollway.agents import demo, memory
from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table, usd
from tollway.core.errors import invalid
from tollway.inference.service import Caller
from tollway.runtime import Runtime

agents_app = typer.Typer(
    help="Durable agents: definitions, knowledge, sessions, escalations.", no_args_is_help=True
)
app.add_typer(agents_app, name="agents")


@agents_app.command("list")
def agent_list(as_json: bool = JsonOpt) -> None:
    """Every agent at its latest version."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.agents.registry.agents()

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "agents",
        ["name", "version", "source", "model", "tools"],
        [
            [r["name"], r["version"], r["source"], r["definition"]["model"], len(r["definition"]["tools"])]
            for r in rows
        ],
    )


@agents_app.command("versions")
def versions(agent: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Every version of an agent's definition."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.agents.registry.versions(agent)

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "versions",
        ["version", "source", "created_at_us"],
        [[r["version"], r["source"], r["created_at_us"]] for r in rows],
    )


@agents_app.command("ingest")
def ingest(
    agent: str = typer.Argument(...),
    files: list[Path] = typer.Argument(None, help="Text or markdown files, one document each."),
    use_demo: bool = typer.Option(False, "--demo", help="The demo support agent's shipped knowledge base."),
    as_json: bool = JsonOpt,
) -> None:
    """Chunk, embed and store documents in the agent's knowledge base."""

    async def go(rt: Runtime) -> dict[str, Any]:
        if use_demo:
            docs = demo.documents()
        elif files:
            docs = [{"id": f.stem[:48], "text": f.read_text(), "metadata": {"source": f.name}} for f in files]
        else:
            raise invalid("missing_documents", "name files to ingest, or --demo", "files")
        _, spec = await rt.agents.registry.latest(agent)
        owner_id = spec.retrieval.owner
        if not owner_id:
            raise invalid("retrieval_not_configured", f"agent {agent!r} has no retrieval.owner", "agent")
        try:
            owner = await rt.customers.get(owner_id)
        except Exception:
            if not use_demo:
                raise
            owner = await rt.customers.create("Demo shop (support knowledge base)", id=owner_id)
        return await memory.ingest(rt.vectors, rt.inference, Caller(owner.id, owner.account_id), spec, docs)

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(
            f"ingested {r['documents']} documents as {r['chunks']} chunks (embeddings: {usd(r['charged'])})"
        )


@agents_app.command("sessions")
def sessions(
    agent: str = typer.Argument(...),
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's sessions."),
    limit: int = typer.Option(100, min=1, max=1000),
    as_json: bool = JsonOpt,
) -> None:
    """An agent's sessions, most recently active first."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        await rt.agents.registry.latest(agent)
        return [s.to_dict() for s in await rt.agents.store.sessions(agent, customer, limit=limit)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        f"sessions of {agent}",
        ["id", "version", "status", "turns", "tool calls", "cost"],
        [
            [
                r["id"],
                r["version"],
                r["status"],
                r["turns"],
                r["usage"]["tool_calls"],
                usd(r["usage"]["cost"]),
            ]
            for r in rows
        ],
    )


@agents_app.command("show")
def show(
    agent: str = typer.Argument(...), session_id: str = typer.Argument(...), as_json: bool = JsonOpt
) -> None:
    """A session with its messages."""

    async def go(rt: Runtime) -> dict[str, Any]:
        s = await rt.agents.session(None, agent, session_id)
        sid = await rt.agents.store.find(agent, session_id)
        s["messages"] = [m.to_dict() for m in await rt.agents.store.messages(agent, sid, limit=1000)]
        return s

    s = _with_runtime(as_json, go)
    if as_json:
        emit_json(s)
        return
    out.print(f"[bold]{agent}/{session_id}[/] v{s['version']} {s['status']}, {s['turns']} turns")
    for m in s["messages"]:
        out.print(f"[bold]{m['role']}[/]: {m['content']}")


@agents_app.command("usage")
def usage(agent: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """Tokens, neurons, cost, latency, tool calls and retrievals over every session."""

    async def go(rt: Runtime) -> dict[str, Any]:
        await rt.agents.registry.latest(agent)
        return await rt.agents.store.usage(agent, None)

    u = _with_runtime(as_json, go)
    if as_json:
        emit_json(u)
        return
    rows = [[k, usd(v) if k == "cost" else v] for k, v in u.items() if k not in ("object", "agent")]
    table(f"usage of {agent}", ["counter", "value"], rows)


@agents_app.command("escalations")
def escalations(
    status: str = typer.Option("open", "--status", help="open or answered"), as_json: bool = JsonOpt
) -> None:
    """The human queue."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.agents.store.escalations(status)

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "escalations",
        ["id", "agent", "session", "reason", "status", "detail"],
        [[r["id"], r["agent"], r["session_id"], r["reason"], r["status"], r["detail"][:60]] for r in rows],
    )


@agents_app.command("reply")
def reply(
    escalation_id: str = typer.Argument(...),
    content: str = typer.Argument(..., help="The answer, as the customer will read it."),
    by: str = typer.Option("operator", "--by", help="Who answers."),
    as_json: bool = JsonOpt,
) -> None:
    """Answer an escalation: the session continues with this answer."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.agents.answer_escalation(escalation_id, content, by)

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"answered {escalation_id}; session {r['agent']}/{r['session_id']} is {r['status']}")
