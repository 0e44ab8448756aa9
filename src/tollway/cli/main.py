"""``tollway``: init, serve, migrate, customers, keys, ledger. Every command takes ``--json``."""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from tollway import __version__
from tollway.cli.output import emit_json, err, fail, out, table, usd
from tollway.core.config import DEFAULT_PATH, ConfigError, default_config_text, sqlite_file
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.money import parse_amount
from tollway.runtime import Runtime
from tollway.settings import Settings, load_settings

app = typer.Typer(
    help="tollway: serve AI, sell it, and let agents spend safely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
customers_app = typer.Typer(help="Customers and their prepaid accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (shown once, stored hashed).", no_args_is_help=True)
ledger_app = typer.Typer(help="The two-phase ledger.", no_args_is_help=True)
app.add_typer(customers_app, name="customers")
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")

T = TypeVar("T")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


class State:
    config: str | None = None


state = State()


@app.callback(invoke_without_command=True)  # `tollway --version` alone
def main(
    ctx: typer.Context,
    config: str | None = typer.Option(
        None, "--config", "-c", envvar="TOLLWAY_CONFIG", help="Path to tollway.toml."
    ),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if ctx.invoked_subcommand != "serve":  # serve: after start-up (tollway.cli.run)
        gc.enable()
    if version:
        out.print(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        err.print("[red]error[/] missing command; try `tollway --help`")
        raise typer.Exit(2)
    state.config = config


def _settings(as_json: bool) -> Settings:
    try:
        return load_settings(state.config)
    except ConfigError as e:
        fail(e, as_json)


def _with_runtime(as_json: bool, fn: Callable[[Runtime], Awaitable[T]], migrate: bool = True) -> T:
    settings = _settings(as_json)
    db = sqlite_file(settings.database.url)
    if migrate and db is not None and not db.exists():  # only `tollway migrate` (and serve) create one
        fail(
            TollwayError(
                ErrorType.NOT_FOUND,
                "database_not_found",
                f"no database at {db}: run tollway in its home (where tollway.toml is), set TOLLWAY_HOME"
                " or -c, or create it with `tollway migrate`",
                "database.url",
            ),
            as_json,
        )

    async def go() -> T:
        rt = Runtime.build(settings)
        try:
            if migrate:
                await rt.migrate()
            return await fn(rt)
        finally:
            await rt.close()

    try:
        return asyncio.run(go())
    except (TollwayError, ConfigError) as e:
        fail(e, as_json)


# ---------------------------------------------------------------------------- init


@app.command()
def init(
    path: Path = typer.Option(Path(DEFAULT_PATH), "--path", help="Where to write the config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    demo: bool = typer.Option(
        False,
        "--demo",
        help="Add the demos: GET /demo/weather at $0.001 over x402 (devnet), and a support-triage agent.",
    ),
    database: bool = typer.Option(
        True, "--database/--no-database", help="Create the database and run its migrations now."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Write a commented tollway.toml with a fresh admin token, and create its database
    (so the first `tollway serve` starts as fast as every later one)."""
    if path.exists() and not force:
        if as_json:
            emit_json({"path": str(path), "created": False})
        else:
            out.print(f"{path} exists; keeping it (use --force to overwrite)")
        return
    token = secrets.token_urlsafe(32)
    text = default_config_text().replace("__ADMIN_TOKEN__", token)
    pay_to = None
    if demo:
        from tollway.agents.demo import demo_config as agent_demo
        from tollway.x402.demo import demo_config

        text, pay_to = demo_config(text)
        text += agent_demo()
    path.write_text(text)
    path.chmod(0o600)
    revision = _create_database(path) if database else None
    if as_json:
        emit_json(
            {"path": str(path), "created": True, "admin_token": token, "demo_pay_to": pay_to,
             "database_revision": revision}
        )  # fmt: skip
    else:
        out.print(f"wrote [bold]{path}[/]")
        if revision is not None:
            out.print(f"database migrated to [bold]{revision}[/]")
        out.print(f"admin token: [bold]{token}[/]  (Authorization: Bearer … on /admin/*)")
        if pay_to:
            out.print(f"demo: GET /demo/weather costs $0.001 over x402, paid to {pay_to} on devnet")
            out.print("demo: agent 'support' at /v1/agents/support/sessions (docs/agents.md)")


def _create_database(path: Path) -> str | None:
    """Migrate the database ``path`` names (a warning, not a failure, when it can't be reached:
    `tollway serve` migrates it too)."""
    try:
        settings = load_settings(str(path))

        async def go() -> str | None:
            rt = Runtime.build(settings)
            try:
                return (await rt.migrate())[1]
            finally:
                await rt.close()

        return asyncio.run(go())
    except Exception as e:  # any failure only defers the migration to serve
        err.print(f"[yellow]warning[/] the database was not created now ({e}); `tollway serve` will")
        return None


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Override [server] host."),
    port: int | None = typer.Option(None, help="Override [server] port."),
) -> None:
    """Run the HTTP server (migrates the database first unless disabled)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from tollway.api.app import create_app
    from tollway.observe import logs

    settings = _settings(False)
    fmt = logs.log_format(settings.telemetry.log_format)  # JSON lines, or text; secrets redacted
    logs.install(settings.server.log_level, fmt)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    if not settings.admin.token:
        err.print("[yellow]warning[/] [admin] token is empty: /admin/* is disabled")
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=settings.server.log_level == "debug" and fmt != "json",  # JSON: tollway's own
        log_config=None if fmt == "json" else LOGGING_CONFIG,  # JSON: through the root's
    )


# ------------------------------------------------------------------------- migrate


@app.command()
def migrate(as_json: bool = JsonOpt) -> None:
    """Apply database migrations."""

    async def go(rt: Runtime) -> tuple[str | None, str | None]:
        if as_json:
            return await rt.migrate()
        with out.status("applying migrations…"):
            return await rt.migrate()

    before, after = _with_runtime(as_json, go, migrate=False)
    if as_json:
        emit_json({"from": before, "to": after, "changed": before != after})
    elif before == after:
        out.print(f"database is current (revision {after})")
    else:
        out.print(f"migrated {before or 'empty'} → [bold]{after}[/]")


# ----------------------------------------------------------------------- customers


@customers_app.command("create")
def customers_create(
    name: str = typer.Option(..., help="Customer name."),
    email: str | None = typer.Option(None, help="Contact email."),
    credit: str | None = typer.Option(
        None, help="Initial prepaid credit: micro-USD digits or dollars like '$5'."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a customer (with a prepaid ledger account), optionally funded."""

    async def go(rt: Runtime) -> dict[str, Any]:
        amount = parse_amount(credit, "credit") if credit is not None else None
        c = await rt.customers.create(name, email)
        data = c.to_dict()
        if amount is not None:
            t = await rt.ledger.transfer("sys_funding", c.account_id, amount, description="initial credit")
            data["credit_transfer_id"] = t.id
        data["balance"] = (await rt.ledger.get_account(c.account_id)).balance
        return data

    d = _with_runtime(as_json, go)
    if as_json:
        emit_json(d)
    else:
        table(
            "customer",
            ["id", "name", "email", "account", "balance"],
            [[d["id"], d["name"], d["email"], d["account_id"], usd(d["balance"])]],
        )


@customers_app.command("list")
def customers_list(limit: int = typer.Option(100, min=1, max=1000), as_json: bool = JsonOpt) -> None:
    """List customers with their balances."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        cs = await rt.customers.list(limit=limit)
        accts = {a.id: a for a in await rt.ledger.accounts([c.account_id for c in cs])}
        return [{**c.to_dict(), "balance": accts[c.account_id].balance} for c in cs]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
    else:
        table(
            "customers",
            ["id", "name", "email", "account", "balance"],
            [[r["id"], r["name"], r["email"], r["account_id"], usd(r["balance"])] for r in rows],
        )


# ---------------------------------------------------------------------------- keys


@keys_app.command("create")
def keys_create(
    customer: str = typer.Option(..., "--customer", help="Customer id."),
    name: str = typer.Option("", help="A label for the key."),
    scope: list[str] = typer.Option(["*"], "--scope", help="Scope (repeatable); default '*'."),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API key. The secret is printed once and never stored."""

    async def go(rt: Runtime) -> dict[str, Any]:
        key, secret = await rt.keys.create(customer, name=name, scopes=list(scope))
        return {**key.to_dict(), "key": secret}

    d = _with_runtime(as_json, go)
    if as_json:
        emit_json(d)
    else:
        table("api key", ["id", "customer", "scopes"], [[d["id"], d["customer_id"], ",".join(d["scopes"])]])
        out.print(f"key: [bold]{d['key']}[/]  (shown once: store it now)")


@keys_app.command("list")
def keys_list(
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's keys."),
    as_json: bool = JsonOpt,
) -> None:
    """List API keys (never their secrets)."""
    keys = _with_runtime(as_json, lambda rt: rt.keys.list(customer))
    if as_json:
        emit_json({"object": "list", "data": [k.to_dict() for k in keys]})
    else:
        table(
            "api keys",
            ["id", "customer", "prefix", "name", "scopes", "revoked"],
            [
                [
                    k.id,
                    k.customer_id,
                    f"tw_{k.prefix}_…",
                    k.name,
                    ",".join(k.scopes),
                    "yes" if k.revoked_at_us else "no",
                ]
                for k in keys
            ],
        )


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="Key id (key_…)."), as_json: bool = JsonOpt) -> None:
    """Revoke an API key: it gets 401 from now on."""
    k = _with_runtime(as_json, lambda rt: rt.keys.revoke(key_id))
    if as_json:
        emit_json(k.to_dict())
    else:
        out.print(f"revoked {k.id}")


# -------------------------------------------------------------------------- ledger


@ledger_app.command("balances")
def ledger_balances(
    account: list[str] = typer.Option(None, "--account", help="Account id (repeatable); default all."),
    as_json: bool = JsonOpt,
) -> None:
    """Account balances, and the ledger's zero-sum check."""
    accts = _with_runtime(as_json, lambda rt: rt.ledger.accounts(account or None))
    total = sum(a.credits_posted - a.debits_posted for a in accts)
    if as_json:
        emit_json({"object": "list", "data": [a.to_dict() for a in accts], "sum_of_balances": total})
        return
    table(
        "balances",
        ["account", "kind", "name", "balance", "available", "reserved"],
        [[a.id, a.kind, a.name, usd(a.balance), usd(a.available), usd(a.debits_pending)] for a in accts],
    )
    if not account:
        out.print(f"sum of balances: {usd(total)} ({'ok' if total == 0 else 'NOT ZERO'})")


@ledger_app.command("transfer")
def ledger_transfer(
    debit: str = typer.Option(..., "--from", help="Account to debit."),
    credit: str = typer.Option(..., "--to", help="Account to credit."),
    amount: str = typer.Option(..., help="Micro-USD digits or dollars like '$1.50'."),
    pending: bool = typer.Option(False, help="Reserve only; post or void later."),
    timeout: int | None = typer.Option(None, help="Seconds before a pending transfer expires."),
    description: str = typer.Option("", help="Free text."),
    idempotency_key: str | None = typer.Option(None, help="Make retries safe."),
    as_json: bool = JsonOpt,
) -> None:
    """Move money between two accounts (or reserve it with --pending)."""

    async def go(rt: Runtime) -> Any:
        return await rt.ledger.transfer(
            debit,
            credit,
            parse_amount(amount),
            pending=pending,
            timeout_s=timeout,
            description=description,
            idempotency_key=idempotency_key,
        )

    _print_transfer(_with_runtime(as_json, go), as_json)


@ledger_app.command("post")
def ledger_post(
    pending_id: str = typer.Argument(..., help="The pending transfer."),
    amount: str | None = typer.Option(None, help="Amount to take (default: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """Post a pending transfer, fully or partly (the rest is released)."""

    async def go(rt: Runtime) -> Any:
        return await rt.ledger.post(pending_id, parse_amount(amount) if amount else None)

    _print_transfer(_with_runtime(as_json, go), as_json)


@ledger_app.command("void")
def ledger_void(
    pending_id: str = typer.Argument(..., help="The pending transfer."), as_json: bool = JsonOpt
) -> None:
    """Void a pending transfer: nothing is taken."""
    _print_transfer(_with_runtime(as_json, lambda rt: rt.ledger.void(pending_id)), as_json)


@ledger_app.command("history")
def ledger_history(
    account: str = typer.Argument(..., help="Account id."),
    limit: int = typer.Option(50, min=1, max=1000),
    as_json: bool = JsonOpt,
) -> None:
    """An account's transfers, newest first."""
    ts = _with_runtime(as_json, lambda rt: rt.ledger.history(account, limit=limit))
    if as_json:
        emit_json({"object": "list", "data": [t.to_dict() for t in ts]})
        return
    table(
        f"history of {account}",
        ["id", "kind", "from", "to", "amount", "description"],
        [
            [t.id, t.kind.value, t.debit_account_id, t.credit_account_id, usd(t.amount), t.description]
            for t in ts
        ],
    )


# --------------------------------------------------------------------------- usage


@app.command()
def usage(
    customer: str | None = typer.Option(None, "--customer", help="Only this customer."),
    day: str | None = typer.Option(None, help="UTC day, YYYY-MM-DD (default: today)."),
    as_json: bool = JsonOpt,
) -> None:
    """Inference usage per customer and model for one UTC day: requests, tokens, neurons, charges."""
    import datetime as dt

    from tollway.inference.usage import rollup

    try:
        when = dt.date.fromisoformat(day) if day else dt.datetime.now(dt.UTC).date()
    except ValueError:
        fail(
            TollwayError(
                "invalid_request_error", "invalid_day", f"day must be YYYY-MM-DD, not {day!r}", "day"
            ),
            as_json,
        )
    rows = _with_runtime(as_json, lambda rt: rollup(rt.engine, when, customer))
    if as_json:
        emit_json({"object": "list", "date": when.isoformat(), "data": rows})
        return
    table(
        f"usage on {when.isoformat()} (UTC)",
        ["customer", "model", "requests", "input tokens", "output tokens", "neurons", "charged"],
        [
            [
                r["customer_id"],
                r["model"],
                r["requests"],
                r["input_tokens"],
                r["output_tokens"],
                f"{r['neurons']:.3f}",
                usd(r["charged"]),
            ]
            for r in rows
        ],
    )


@app.command()
def logs(
    customer: str | None = typer.Option(None, "--customer", help="Only this customer."),
    key: str | None = typer.Option(None, "--key", help="Only this API key id."),
    model: str | None = typer.Option(None, "--model", help="Only this model."),
    status: int | None = typer.Option(None, "--status", min=100, max=599, help="Only this HTTP status."),
    limit: int = typer.Option(50, min=1, max=1000, help="How many rows (newest first)."),
    before: str | None = typer.Option(None, "--before", help="Page: the last id of the previous page."),
    as_json: bool = JsonOpt,
) -> None:
    """The gateway's request log, newest first: status, tokens, cost, latency, cache and attempts."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.gateway.log.query(
            limit=limit, before=before, customer_id=customer, key_id=key, model=model, status=status
        )

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "requests (newest first)",
        ["id", "model", "deployment", "status", "tokens in/out", "cost", "ms", "ttft", "cache", "tries"],
        [
            [
                r["id"],
                r["model"] or "",
                r["deployment"] or "",
                r["status"] if not r["error_code"] else f"{r['status']} {r['error_code']}",
                f"{r['input_tokens']}/{r['output_tokens']}",
                usd(r["cost"]),
                r["latency_ms"],
                "" if r["ttft_ms"] is None else r["ttft_ms"],
                r["cache"] or "",
                r["attempts"],
            ]
            for r in rows
        ],
    )


def _print_transfer(t: Any, as_json: bool) -> None:
    if as_json:
        emit_json(t.to_dict())
    else:
        table(
            "transfer",
            ["id", "kind", "from", "to", "amount"],
            [[t.id, t.kind.value, t.debit_account_id, t.credit_account_id, usd(t.amount)]],
        )


# Command groups that live in their own modules register themselves on ``app``.
from tollway.cli import agents as _agents  # noqa: E402, F401
from tollway.cli import alerts as _alerts  # noqa: E402, F401
from tollway.cli import billing as _billing  # noqa: E402, F401
from tollway.cli import demo as _demo  # noqa: E402, F401
from tollway.cli import evals as _evals  # noqa: E402, F401
from tollway.cli import provision as _provision  # noqa: E402, F401
from tollway.cli import requests as _requests  # noqa: E402, F401
from tollway.cli import schedules as _schedules  # noqa: E402, F401
from tollway.cli import stripe as _stripe  # noqa: E402, F401
from tollway.cli import vectors as _vectors  # noqa: E402, F401
from tollway.cli import wallet_owner as _wallet_owner  # noqa: E402, F401
from tollway.cli import wallets as _wallets  # noqa: E402, F401
from tollway.cli import x402 as _x402  # noqa: E402, F401

if __name__ == "__main__":
    app()
