"""``tollway devnet`` and ``tollway revenue``: x402 from the command line."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, fail, out, table, usd
from tollway.core.errors import invalid
from tollway.runtime import Runtime
from tollway.x402 import payments as P
from tollway.x402.exact_evm import is_address
from tollway.x402.rules import atomic

devnet_app = typer.Typer(
    help="The devnet token (chain 31337): fund payers, read balances.", no_args_is_help=True
)
app.add_typer(devnet_app, name="devnet")


@devnet_app.command("fund")
def devnet_fund(
    address: str = typer.Argument(..., help="The payer's 0x address."),
    amount: str = typer.Argument(..., help='"$5", or atomic units ("5000000" = $5 at 6 decimals).'),
    as_json: bool = JsonOpt,
) -> None:
    """Mint devnet tokens to ADDRESS, so it can pay x402 routes on devnet."""
    if not is_address(address):
        fail(invalid("invalid_address", "address must be 0x followed by 40 hex digits", "address"), as_json)

    async def go(rt: Runtime) -> dict[str, Any]:
        try:
            units = atomic(amount, rt.settings.x402.asset_decimals)
        except ValueError as e:
            raise invalid("invalid_amount", str(e), "amount") from None
        if units <= 0:
            raise invalid("invalid_amount", "amount must be positive", "amount")
        t = await rt.devnet.fund(address, units)
        return {
            "address": address,
            "amount": units,
            "balance": await rt.devnet.balance(address),
            "transfer_id": t.id,
        }

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"funded [bold]{address}[/] with {usd(r['amount'])}; balance {usd(r['balance'])}")


@devnet_app.command("new-payer")
def devnet_new_payer(
    fund: str = typer.Option("$1", "--fund", help="How much to mint to it."),
    as_json: bool = JsonOpt,
) -> None:
    """Make a throwaway payer key (devnet only), fund it, and print it."""
    from eth_account import Account

    acct = Account.create()

    async def go(rt: Runtime) -> int:
        units = atomic(fund, rt.settings.x402.asset_decimals)
        await rt.devnet.fund(acct.address, units)
        return await rt.devnet.balance(acct.address)

    bal = _with_runtime(as_json, go)
    key = "0x" + acct.key.hex().removeprefix("0x")
    if as_json:
        emit_json({"address": acct.address, "private_key": key, "balance": bal})
    else:
        out.print(f"address:     [bold]{acct.address}[/]  (balance {usd(bal)})")
        out.print(f"private key: {key}  (a devnet test key: never use it on a real chain)")


@devnet_app.command("balance")
def devnet_balance(address: str = typer.Argument(..., help="A 0x address."), as_json: bool = JsonOpt) -> None:
    """A devnet address's spendable balance."""
    if not is_address(address):
        fail(invalid("invalid_address", "address must be 0x followed by 40 hex digits", "address"), as_json)
    bal = _with_runtime(as_json, lambda rt: rt.devnet.balance(address))
    if as_json:
        emit_json({"address": address, "balance": bal})
    else:
        out.print(f"{address}: {usd(bal)}")


@app.command()
def revenue(
    limit: int = typer.Option(20, min=1, max=1000, help="How many recent payments to list."),
    as_json: bool = JsonOpt,
) -> None:
    """x402 revenue: totals of settled payments, then the most recent ones."""

    async def go(rt: Runtime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await P.revenue(rt.engine), await P.payments(rt.engine, limit=limit)

    total, rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({**total, "recent": rows})
        return
    out.print(f"x402 revenue: [bold]{usd(total['amount'])}[/] from {total['payments']} payments")
    table(
        "recent payments",
        ["when (UTC)", "amount", "payer", "resource", "transaction"],
        [
            [
                dt.datetime.fromtimestamp(r["created_at_us"] / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                usd(r["amount"]),
                r["payer"] or "",
                r["resource"] or "",
                (r["transaction"] or "")[:18] + "…",
            ]
            for r in rows
        ],
    )
