"""``tollway wallet`` and ``tollway approvals``: agent wallets from the command line."""

from __future__ import annotations

import json
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, fail, out, table, usd
from tollway.core.errors import invalid
from tollway.runtime import Runtime

wallet_app = typer.Typer(
    help="Agent wallets: balances, policies, delegated tokens, audit.", no_args_is_help=True
)
approvals_app = typer.Typer(help="Payments waiting for a human.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
app.add_typer(approvals_app, name="approvals")

WalletArg = typer.Argument(..., help="The wallet's id (wal_...).")


def _policy(text: str | None, as_json: bool) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        fail(invalid("invalid_policy", f"--policy is not JSON: {e}", "policy"), as_json)
    if not isinstance(value, dict):
        fail(invalid("invalid_policy", "--policy is a JSON object", "policy"), as_json)
    return value


async def _dict(rt: Runtime, wallet_id: str) -> dict[str, Any]:
    w = await rt.wallets.get(wallet_id)
    bal, avail = await rt.wallets.balance(w)
    return w.to_dict(bal, avail)


def _print_wallet(w: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(w)
        return
    table(
        f"wallet {w['id']}",
        ["owner", "balance", "available", "evm address", "policy"],
        [
            [
                w["owner"],
                usd(w["balance"]),
                usd(w["available"]),
                w["evm_address"] or "",
                json.dumps(w["policy"]),
            ]
        ],
    )


@wallet_app.command("create")
def wallet_create(
    customer: str | None = typer.Option(None, "--customer", help="Owned by this customer."),
    owner: str | None = typer.Option(None, "--owner", help="Owned by a human (a name)."),
    policy: str | None = typer.Option(
        None,
        "--policy",
        help='The spend policy, JSON: \'{"spending_limits": [{"amount": "$10", "interval": "daily"}]}\'.',
    ),
    with_key: bool = typer.Option(
        False, "--with-key", help="Give it an EVM signing key (needs $TOLLWAY_WALLET_KEY)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a wallet."""
    pol = _policy(policy, as_json)

    async def go(rt: Runtime) -> dict[str, Any]:
        w = await rt.wallets.create(
            customer_id=customer, owner=owner, policy=pol, with_key=with_key, actor="cli"
        )
        return await _dict(rt, w.id)

    _print_wallet(_with_runtime(as_json, go), as_json)


@wallet_app.command("list")
def wallet_list(customer: str | None = typer.Option(None, "--customer"), as_json: bool = JsonOpt) -> None:
    """List wallets."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return [await _dict(rt, w.id) for w in await rt.wallets.all(customer)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "wallets",
        ["id", "owner", "balance", "available"],
        [[w["id"], w["owner"], usd(w["balance"]), usd(w["available"])] for w in rows],
    )


@wallet_app.command("show")
def wallet_show(wallet: str = WalletArg, as_json: bool = JsonOpt) -> None:
    """A wallet, its balance and its policy."""
    _print_wallet(_with_runtime(as_json, lambda rt: _dict(rt, wallet)), as_json)


@wallet_app.command("topup")
def wallet_topup(
    wallet: str = WalletArg,
    amount: str = typer.Argument(..., help='"$5" or micro-USD.'),
    source: str | None = typer.Option(
        None, "--from", help="Ledger account to fund from (default: the owner's prepaid)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Fund a wallet from the ledger."""
    r = _with_runtime(as_json, lambda rt: rt.wallets.topup(wallet, amount, source=source))
    if as_json:
        emit_json(r)
    else:
        out.print(f"topped up {wallet} with {usd(r['amount'])}; balance {usd(r['balance'])}")


@wallet_app.command("policy")
def wallet_policy(
    wallet: str = WalletArg,
    policy: str = typer.Argument(..., help="The new policy, as JSON."),
    as_json: bool = JsonOpt,
) -> None:
    """Replace a wallet's spend policy."""
    pol = _policy(policy, as_json)

    async def go(rt: Runtime) -> dict[str, Any]:
        await rt.wallets.set_policy(wallet, pol, actor="cli")
        return await _dict(rt, wallet)

    _print_wallet(_with_runtime(as_json, go), as_json)


@wallet_app.command("grant")
def wallet_grant(
    wallet: str = WalletArg,
    name: str = typer.Option("", help="Which agent it is for."),
    max_per_payment: str | None = typer.Option(None, "--max-per-payment", help='e.g. "$1".'),
    allowance: str | None = typer.Option(None, "--allowance", help="Total it may ever spend."),
    expires_days: int | None = typer.Option(None, "--expires-days"),
    single_use: bool = typer.Option(False, "--single-use"),
    category: list[str] = typer.Option(
        [], "--category", help="Allowed categories (repeat); default: the wallet's."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Issue a delegated token for one agent (shown once)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        limits: dict[str, Any] = {"single_use": single_use}
        if max_per_payment:
            limits["max_per_payment"] = max_per_payment
        if allowance:
            limits["total_allowance"] = allowance
        if expires_days:
            limits["expires_at_us"] = rt.clock.now_us() + expires_days * 86_400_000_000
        if category:
            limits["categories"] = category
        t, secret = await rt.wallets.grant(wallet, name=name, limits=limits, actor="cli")
        return {**t.to_dict(), "token": secret}

    t = _with_runtime(as_json, go)
    if as_json:
        emit_json(t)
    else:
        out.print(
            f"agent token {t['id']} for wallet {wallet}:\n[bold]{t['token']}[/]\n"
            "(shown once: give it to the agent)"
        )


@wallet_app.command("tokens")
def wallet_tokens(wallet: str = WalletArg, as_json: bool = JsonOpt) -> None:
    """A wallet's agent tokens."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        await rt.wallets.get(wallet)
        return [t.to_dict() for t in await rt.wallets.tokens(wallet)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        f"agent tokens of {wallet}",
        ["id", "name", "revoked", "frozen", "limits"],
        [
            [t["id"], t["name"], t["revoked"], t["frozen_reason"] or t["frozen"], json.dumps(t["limits"])]
            for t in rows
        ],
    )


@wallet_app.command("revoke")
def wallet_revoke(
    token: str = typer.Argument(..., help="The token's id (agt_...)."), as_json: bool = JsonOpt
) -> None:
    """Revoke an agent token."""
    t = _with_runtime(as_json, lambda rt: rt.authorizer.revoke(token, actor="cli"))
    emit_json(t.to_dict()) if as_json else out.print(f"revoked {token}")


@wallet_app.command("unfreeze")
def wallet_unfreeze(
    token: str = typer.Argument(..., help="The token's id (agt_...)."), as_json: bool = JsonOpt
) -> None:
    """Unfreeze a token the runaway-loop guard froze."""
    t = _with_runtime(as_json, lambda rt: rt.wallets.unfreeze(token, actor="cli"))
    emit_json(t.to_dict()) if as_json else out.print(f"unfroze {token}")


@wallet_app.command("audit")
def wallet_audit(
    wallet: str = WalletArg,
    token: str | None = typer.Option(None, "--token", help="Only this token's events."),
    limit: int = typer.Option(50, min=1, max=1000),
    as_json: bool = JsonOpt,
) -> None:
    """A wallet's audit trail, newest first."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        await rt.wallets.get(wallet)
        return await rt.wallets.audit.query(wallet_id=wallet, token_id=token, limit=limit)

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        f"audit of {wallet} (newest first)",
        ["id", "event", "actor", "token", "authorization", "detail"],
        [
            [
                e["id"],
                e["event"],
                e["actor"],
                e["token_id"] or "",
                e["authorization_id"] or "",
                json.dumps(e["detail"]),
            ]
            for e in rows
        ],
    )


@approvals_app.command("list")
def approvals_list(as_json: bool = JsonOpt) -> None:
    """Payments waiting for a human."""
    rows = _with_runtime(as_json, lambda rt: rt.authorizer.pending())
    data = [d.to_dict() for d in rows]
    if as_json:
        emit_json({"object": "list", "data": data})
        return
    table(
        "waiting for approval",
        ["id", "wallet", "amount", "payee", "category", "memo"],
        [[d["id"], d["wallet_id"], usd(d["amount"]), d["payee"], d["category"], d["memo"]] for d in data],
    )


def _decide(auth_id: str, approve: bool, actor: str, as_json: bool) -> None:
    async def go(rt: Runtime) -> dict[str, Any]:
        a = rt.authorizer
        d = await (a.approve(auth_id, actor) if approve else a.deny(auth_id, actor))
        return d.to_dict()

    d = _with_runtime(as_json, go)
    if as_json:
        emit_json(d)
    else:
        out.print(f"{auth_id}: {d['status']}" + (f" ({d['reason']})" if d["reason"] else ""))


@approvals_app.command("approve")
def approvals_approve(
    authorization: str = typer.Argument(..., help="The authorization's id (wauth_...)."),
    actor: str = typer.Option("cli", "--as", help="Who approves (recorded in the audit trail)."),
    as_json: bool = JsonOpt,
) -> None:
    """Approve a waiting payment: it is then held on the wallet."""
    _decide(authorization, True, actor, as_json)


@approvals_app.command("deny")
def approvals_deny(
    authorization: str = typer.Argument(..., help="The authorization's id (wauth_...)."),
    actor: str = typer.Option("cli", "--as", help="Who denies (recorded in the audit trail)."),
    as_json: bool = JsonOpt,
) -> None:
    """Deny a waiting payment."""
    _decide(authorization, False, actor, as_json)
