"""``tollway wallet bootstrap|requests|approve-request|deny-request|pnl|autopilot``:
an owner's side of budget requests, a wallet's profit and loss, and its autopilot."""

from __future__ import annotations

import json
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime
from tollway.cli.output import emit_json, fail, out, table, usd
from tollway.cli.wallets import WalletArg, wallet_app
from tollway.core.errors import invalid
from tollway.runtime import Runtime
from tollway.wallets.pnl import pnl

RequestArg = typer.Argument(..., help="The budget request's id (wbr_...).")


def _json_object(text: str | None, param: str, as_json: bool) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        fail(invalid(f"invalid_{param}", f"--{param} is not JSON: {e}", param), as_json)
    if not isinstance(value, dict):
        fail(invalid(f"invalid_{param}", f"--{param} is a JSON object", param), as_json)
    return value


def _emit_request(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(r)
        return
    caps = r["approved_caps"] or r["caps"]
    out.print(
        f"{r['id']}: {r['status']} — {usd(caps['amount'])} {caps['period']}"
        + (f" ({r['reason']})" if r["reason"] else "")
    )


@wallet_app.command("bootstrap")
def wallet_bootstrap(
    wallet: str = WalletArg,
    name: str = typer.Option("", "--name", help="What it is for (shown in listings)."),
    expires_in: int | None = typer.Option(
        None, "--expires-in", help="Seconds (default: [wallets] bootstrap_seconds)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """A bootstrap credential for a new agent: it may only ask for a budget (shown once)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        b, secret = await rt.bootstraps.create(wallet, name=name, expires_in_seconds=expires_in, actor="cli")
        return {**b.to_dict(), "credential": secret}

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"bootstrap credential {r['id']} for {wallet} (shown once):\n{r['credential']}")


@wallet_app.command("requests")
def wallet_requests(
    status: str | None = typer.Option(None, "--status", help="pending, approved, issued, denied or expired."),
    wallet: str | None = typer.Option(None, "--wallet", help="Only this wallet's."),
    as_json: bool = JsonOpt,
) -> None:
    """Agents' budget requests."""
    rows = _with_runtime(as_json, lambda rt: rt.budget_requests.list(status, wallet))
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "budget requests",
        ["id", "wallet", "status", "amount", "period", "categories", "purpose"],
        [
            [
                r["id"], r["wallet_id"], r["status"], usd(r["caps"]["amount"]), r["caps"]["period"],
                ",".join(r["caps"]["categories"] or ["(the wallet's)"]), r["purpose"],
            ]
            for r in rows
        ],
    )  # fmt: skip


@wallet_app.command("approve-request")
def wallet_approve_request(
    request: str = RequestArg,
    caps: str | None = typer.Option(
        None,
        "--caps",
        help='The caps granted, JSON (default: as asked): \'{"amount": "$5", "period": "monthly"}\'.',
    ),
    actor: str = typer.Option("cli", "--as", help="Who approves (recorded in the audit trail)."),
    as_json: bool = JsonOpt,
) -> None:
    """Approve a budget request: the agent collects its token at its next read."""
    edited = _json_object(caps, "caps", as_json)
    _emit_request(
        _with_runtime(as_json, lambda rt: rt.budget_requests.approve(request, edited, actor)), as_json
    )


@wallet_app.command("deny-request")
def wallet_deny_request(
    request: str = RequestArg,
    reason: str = typer.Option(..., "--reason", help="Why (the agent reads it)."),
    actor: str = typer.Option("cli", "--as", help="Who denies (recorded in the audit trail)."),
    as_json: bool = JsonOpt,
) -> None:
    """Deny a budget request."""
    _emit_request(_with_runtime(as_json, lambda rt: rt.budget_requests.deny(request, reason, actor)), as_json)


@wallet_app.command("pnl")
def wallet_pnl(
    wallet: str = WalletArg,
    from_: str | None = typer.Option(None, "--from", help="ISO date or time (default: this month)."),
    to: str | None = typer.Option(None, "--to", help="ISO date or time, exclusive."),
    as_json: bool = JsonOpt,
) -> None:
    """A wallet's profit and loss: revenue by route, costs by category, net."""

    async def go(rt: Runtime) -> dict[str, Any]:
        w = await rt.wallets.get(wallet)
        apps = rt.settings.provision.apps_domain
        return await pnl(rt.engine, w.id, w.account_id, apps, rt.clock.now_us(), from_, to)

    p = _with_runtime(as_json, go)
    if as_json:
        emit_json(p)
        return
    rows: list[list[Any]] = [["revenue", route, usd(a)] for route, a in p["revenue"]["by_route"].items()]
    rows.append(["revenue", "total", usd(p["revenue"]["total"])])
    rows += [["costs", cat, usd(a)] for cat, a in p["costs"]["by_category"].items()]
    rows.append(["costs", "total", usd(p["costs"]["total"])])
    rows += [["net", "", usd(p["net"])], ["top-ups", "", usd(p["topups"])]]
    rows += [["withdrawals", "", usd(p["withdrawals"])], ["committed (held)", "", usd(p["committed"])]]
    rows += [["balance", "opening → closing", f"{usd(p['opening_balance'])} → {usd(p['closing_balance'])}"]]
    rows += [["deployment", d["name"], f"net {usd(d['net'])}"] for d in p["deployments"]]
    table(f"P&L of {wallet}", ["line", "what", "amount"], rows)


@wallet_app.command("autopilot")
def wallet_autopilot(
    wallet: str = WalletArg,
    floor: str | None = typer.Option(None, "--floor", help='Stop new spending below this balance ("$1").'),
    window: int | None = typer.Option(
        None, "--teardown-window", help="Tear down deployments unprofitable over DAYS."
    ),
    min_age: int = typer.Option(3, "--min-age", help="Only deployments at least DAYS old."),
    off: bool = typer.Option(False, "--off", help="Turn the autopilot off."),
    as_json: bool = JsonOpt,
) -> None:
    """Show a wallet's autopilot, or set it (any option replaces the settings)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        ap = rt.authorizer.autopilot
        if floor is None and window is None and not off:
            return await ap.get(wallet)
        settings: dict[str, Any] = {"enabled": not off, "spend_floor": floor}
        if window is not None:
            settings["teardown_unprofitable"] = {"window_days": window, "min_age_days": min_age}
        return await ap.put(wallet, settings, actor="cli")

    s = _with_runtime(as_json, go)
    if as_json:
        emit_json(s)
        return
    rule = s["teardown_unprofitable"]
    table(
        f"autopilot of {wallet}",
        ["enabled", "spend floor", "tear down unprofitable"],
        [
            [
                s["enabled"],
                "" if s["spend_floor"] is None else usd(s["spend_floor"]),
                "" if rule is None else f"over {rule['window_days']} days, {rule['min_age_days']}+ days old",
            ]
        ],
    )


@wallet_app.command("autopilot-check")
def wallet_autopilot_check(as_json: bool = JsonOpt) -> None:
    """Run the autopilot's check now (the server runs it every [wallets] autopilot_seconds)."""
    rows = _with_runtime(as_json, lambda rt: rt.authorizer.autopilot.check())
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "autopilot decisions",
        ["wallet", "decision", "why"],
        [[r["wallet_id"], r["decision"], r["explanation"]] for r in rows],
    )
