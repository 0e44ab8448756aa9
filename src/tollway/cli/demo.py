"""``tollway demo business``: the whole loop of an agent's business on the embedded
defaults (issue 22 §8), on a temporary home: the server runs in this process
(uvicorn on a free port, the edge on another) and everything goes over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer

from tollway.cli.main import JsonOpt, app
from tollway.cli.output import emit_json, err, out, table, usd
from tollway.core.config import DEFAULT_PATH, default_config_text
from tollway.runtime import Runtime
from tollway.settings import Settings, load_settings

demo_app = typer.Typer(help="Demonstrations on the embedded defaults.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

# About a month of hosting at [provision] hosting_monthly_price's $5: 2 micro-USD a live worker-second.
HOSTING_PER_WORKER_SECOND = Decimal(2)
# Hosting billed as it accrues (the server ticks every few seconds), not hourly: a minute's demo shows it.
BILLING_TICK_SECONDS = 1.0


class DemoError(Exception):
    """The demo cannot run here (no sandbox, no x402 SDK): why, and what to do."""


@demo_app.command("business")
def business(
    customers: int = typer.Option(50, "--customers", min=1, max=1000, help="How many customers pay."),
    home: Path | None = typer.Option(
        None, "--home", help="Where to put its tollway home (default: a temp dir)."
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the home (its database, its tollway.toml) after."),
    unsafe_no_sandbox: bool = typer.Option(
        False, "--unsafe-no-sandbox", help="Run the deployed app WITHOUT bubblewrap (never on a shared host)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """An agent runs a business: a wallet funded with $5, a budget asked and approved, a domain
    bought, an AI answer API deployed and priced, customers paying over x402 (devnet), hosting
    charged, and the P&L with the ledger's zero-sum check."""
    say = _Say(as_json)
    made = home is None
    root = Path(tempfile.mkdtemp(prefix="tollway-demo-")) if home is None else home
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # the workers' uids traverse it to their bundles
    try:
        result = asyncio.run(_run(root, customers, unsafe_no_sandbox, say))
    except DemoError as e:
        result = {"ok": False, "error": str(e)}
        say.fail(str(e))
    finally:
        if made and not keep:
            shutil.rmtree(root, ignore_errors=True)
    result["home"] = str(root) if keep or not made else None
    if as_json:
        emit_json(result)
    elif result.get("pnl"):
        _print_pnl(result)
    if not result["ok"]:
        raise typer.Exit(1)


class _Say:
    """Each step as a line (people), or nothing but the JSON at the end (--json)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, text: str, data: dict[str, Any] | None = None) -> None:
        if not self.as_json:
            out.print(f"[green]✓[/] {text}", highlight=False)

    def fail(self, text: str) -> None:
        if not self.as_json:
            err.print(f"[bold red]demo failed[/] {text}", highlight=False)


async def _run(root: Path, customers: int, unsafe: bool, say: _Say) -> dict[str, Any]:
    try:  # the official x402 SDK (its httpx client): the customers pay with it
        import httpx
        import x402  # noqa: F401
    except ImportError:
        raise DemoError(
            "the demo's customers pay with the official x402 SDK: pip install 'tollway[demo]'"
        ) from None
    from tollway.cli.demo_business import Business, Plan, StepFailed, balance_identity, ledger_check, pricing

    plan = Plan(customers=customers)
    settings = _settings(root, unsafe)
    rt = Runtime.build(settings)
    _check_sandbox(rt, unsafe)
    if unsafe:
        say("[yellow]--unsafe-no-sandbox[/]: the deployed app runs WITHOUT a sandbox, as this user")
    async with _serving(rt) as api:
        say(f"tollway serving at {api} (edge 127.0.0.1:{settings.provision.edge_port}), home {root}")
        biz = Business(rt, api, f"http://127.0.0.1:{settings.provision.edge_port}",
                       settings.admin.token, plan, say)  # fmt: skip
        result: dict[str, Any] = {"ok": False}
        try:
            with _progress(say.as_json) as (progress, tid):
                loop = await biz.run(lambda k, n: progress.update(tid, completed=k, total=n))
        except (StepFailed, httpx.HTTPError) as e:
            say.fail(str(e))
            result.update(error=str(e), steps=biz.steps)
            return result
        pnl = loop["pnl"]
        ledger = await ledger_check(rt)
        identity = balance_identity(pnl)
    price = pricing(plan, pnl, plan.customers, settings.x402.take_rate_bps)
    result.update(
        ok=ledger["ok"] and identity["ok"], steps=biz.steps, wallet_id=loop["wallet"]["id"],
        host=loop["host"], customers=loop["customers"], pricing=price, pnl=pnl, ledger=ledger,
        balance_identity=identity,
    )  # fmt: skip
    return result


def _settings(root: Path, unsafe: bool) -> Settings:
    """The embedded defaults in ``root`` (a fresh admin token), with the edge on a free port,
    hosting metered, and the wallets' key in the environment (an agent's address needs it)."""
    path = root / DEFAULT_PATH
    if not path.exists():
        path.write_text(default_config_text().replace("__ADMIN_TOKEN__", secrets.token_urlsafe(32)))
        path.chmod(0o600)
    s = load_settings(path, env={})
    s.server.host, s.server.port = "127.0.0.1", _free_port()
    s.provision.edge_host, s.provision.edge_port = "127.0.0.1", _free_port()
    s.provision.data_dir = str(root / "provision")
    s.provision.hosting_price_per_worker_second = HOSTING_PER_WORKER_SECOND
    s.provision.billing_tick_seconds = BILLING_TICK_SECONDS
    s.provision.warm_workers = 1
    s.provision.unsafe_no_sandbox = unsafe
    os.environ.setdefault(s.wallets.key_env, base64.b64encode(secrets.token_bytes(32)).decode())
    return s


def _check_sandbox(rt: Runtime, unsafe: bool) -> None:
    from tollway.provision.sandbox import Sandbox, SandboxUnavailable

    if unsafe:
        return
    cfg = rt.settings.provision
    try:
        Sandbox.of(cfg).check(cfg.worker_uid_base)
    except SandboxUnavailable as e:
        raise DemoError(
            f"{e}\nThe demo deploys an app, which runs in a bubblewrap sandbox: run it as root with"
            " bubblewrap installed (apt-get install bubblewrap), or pass --unsafe-no-sandbox to run the"
            " app unsandboxed (never on a shared host)."
        ) from None


@contextlib.asynccontextmanager
async def _serving(rt: Runtime) -> AsyncIterator[str]:
    """The app on uvicorn in this event loop (its lifespan starts the edge, the runner…)."""
    import uvicorn

    from tollway.api.app import create_app

    s = rt.settings
    quiet = logging.getLogger("tollway")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the demo prints its own lines (restored after it)
    try:
        config = uvicorn.Config(
            create_app(rt=rt), host=s.server.host, port=s.server.port, log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise DemoError("the server did not start")
            await asyncio.sleep(0.05)
        try:
            yield f"http://{s.server.host}:{s.server.port}"
        finally:
            server.should_exit = True
            await task
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def _progress(quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("customers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=out, transient=True, disable=quiet,
    )  # fmt: skip
    with progress:
        yield progress, progress.add_task("customers", total=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _print_pnl(r: dict[str, Any]) -> None:
    pnl, p = r["pnl"], r["pricing"]
    rows: list[list[Any]] = [["revenue", route, usd(v)] for route, v in pnl["revenue"]["by_route"].items()]
    rows.append(["revenue", "total", usd(pnl["revenue"]["total"])])
    rows += [["costs", cat, usd(v)] for cat, v in pnl["costs"]["by_category"].items()]
    rows.append(["costs", "total", usd(pnl["costs"]["total"])])
    rows.append(["net", "", usd(pnl["net"])])
    rows.append(["top-ups", "", usd(pnl["topups"])])
    rows.append(
        ["balance", "opening → closing", f"{usd(pnl['opening_balance'])} → {usd(pnl['closing_balance'])}"]
    )
    table(f"P&L of {r['wallet_id']} (GET /v1/wallet/pnl, as the agent)", ["line", "what", "amount"], rows)
    even = p["break_even_customers"]
    out.print(
        f"per answer: price {usd(p['price'])}, fee {usd(p['fee_per_answer'])}"
        f" ({p['take_rate_bps'] / 100:g}%), inference ≈ {usd(p['inference_per_answer'])};"
        f" fixed costs {usd(p['fixed_costs'])}"
        + (f"; breaks even at {even} customers" if even is not None else ""),
        highlight=False,
    )
    led, ident = r["ledger"], r["balance_identity"]
    out.print(
        f"ledger: sum of balances over {led['accounts']} accounts = {usd(led['sum_of_balances'])} "
        f"({'ok' if led['ok'] else 'NOT ZERO'}); wallet: closing - opening = "
        f"{usd(ident['balance_change'])} = net + top-ups - withdrawals"
        f" ({'ok' if ident['ok'] else 'MISMATCH'})",
        highlight=False,
    )
    out.print(
        "[bold green]the agent's business closed the loop[/]" if r["ok"] else "[bold red]checks failed[/]"
    )
