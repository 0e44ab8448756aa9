"""``tollway provision``: what agents bought (domains, deployments), zone
files, the trademark guard and its overrides, and the reaper."""

from __future__ import annotations

from typing import Any

import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table, usd
from tollway.runtime import Runtime

provision_app = typer.Typer(
    help="Domains, DNS and deployments bought by agents; trademark overrides; the reaper.",
    no_args_is_help=True,
)
app.add_typer(provision_app, name="provision")


@provision_app.command("domains")
def domains(
    wallet: str | None = typer.Option(None, "--wallet", help="Only this wallet's."), as_json: bool = JsonOpt
) -> None:
    """Domains bought through the broker."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return [d.to_dict() for d in await rt.provision.domains.all(wallet)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "domains",
        ["name", "wallet", "provider", "renew/yr", "expires (unix)"],
        [
            [
                d["unicode"],
                d["wallet_id"],
                d["provider"],
                usd(d["renew_price"]),
                d["expires_at_us"] // 1_000_000,
            ]
            for d in rows
        ],
    )


@provision_app.command("deployments")
def deployments(
    wallet: str | None = typer.Option(None, "--wallet", help="Only this wallet's."), as_json: bool = JsonOpt
) -> None:
    """Deployments and their live versions."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.provision.deployments.all(wallet)

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "deployments",
        ["name", "wallet", "live version", "hostnames"],
        [[d["name"], d["wallet_id"], d["live_version"], ", ".join(d["hostnames"])] for d in rows],
    )


@provision_app.command("check")
def check(domain: str = typer.Argument(..., help="A name to register."), as_json: bool = JsonOpt) -> None:
    """Availability, price and the trademark guard's verdict for a name."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.provision.domains.verdict(domain, None)

    v = _with_runtime(as_json, go)
    if as_json:
        emit_json(v)
        return
    blocked = v["blocked"]
    table(
        f"domain {v['unicode']}",
        ["available", "price", "renew", "blocked by"],
        [
            [
                v["available"],
                usd(v["price"]),
                usd(v["renew_price"]),
                f"{blocked['mark']} ({blocked['match']})" if blocked else "",
            ]
        ],
    )


@provision_app.command("zone")
def zone(domain: str = typer.Argument(...), as_json: bool = JsonOpt) -> None:
    """A domain's zone as an RFC 1035 zone file."""

    async def go(rt: Runtime) -> str:
        dom = await rt.provision.domains.get(domain)
        return await rt.provision.domains.zone_file(dom.name)

    text = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "zone_file", "domain": domain, "text": text})
    else:
        out.print(text, end="", markup=False, highlight=False)


@provision_app.command("override")
def override(
    domain: str = typer.Argument(..., help="The blocked name."),
    wallet: str = typer.Option(..., "--wallet", help="The wallet allowed to buy it."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the wallet's audit trail)."),
    actor: str = typer.Option("cli", "--actor", help="Who decided."),
    as_json: bool = JsonOpt,
) -> None:
    """Let a wallet buy a name the trademark guard blocks (audited)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.provision.domains.override(domain, wallet, actor, reason)

    o = _with_runtime(as_json, go)
    if as_json:
        emit_json(o)
    else:
        out.print(f"{o['name']} allowed for {o['wallet_id']} (mark: {o['mark'] or 'none'}) by {o['actor']}")


@provision_app.command("overrides")
def overrides(as_json: bool = JsonOpt) -> None:
    """Trademark overrides."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return await rt.provision.domains.overrides()

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "overrides",
        ["name", "wallet", "actor", "reason"],
        [[o["name"], o["wallet_id"], o["actor"], o["reason"]] for o in rows],
    )


@provision_app.command("reap")
def reap(
    apply: bool = typer.Option(False, "--apply", help="Tear down what is flagged (default: only report)."),
    as_json: bool = JsonOpt,
) -> None:
    """Flag unused deployments and domains; with --apply, tear them down and report the money saved."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.provision.reap(apply)

    rep = _with_runtime(as_json, go)
    if as_json:
        emit_json(rep)
        return
    table(
        "unused resources",
        ["kind", "name", "wallet", "reason", "idle (s)", "recurring", "per"],
        [
            [
                f["kind"],
                f["name"],
                f["wallet_id"],
                f["reason"],
                f["idle_seconds"],
                usd(f["recurring_price"]),
                f["period"],
            ]
            for f in rep["flagged"]
        ],
    )
    if apply:
        out.print(f"tore down {len(rep['torn_down'])}; saved {usd(rep['saved'])}")
    else:
        out.print(f"would save {usd(rep['would_save'])} (run with --apply to tear down)")


@provision_app.command("tick")
def tick(as_json: bool = JsonOpt) -> None:
    """Run the billing tick once: charge metered hosting and due renewals, suspend
    what stayed unpaid past its grace, reclaim what stayed suspended (once per interval)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.provision.tick()

    rep = _with_runtime(as_json, go)
    if as_json:
        emit_json(rep)
        return
    rows = [["hosting", c["name"], usd(c["amount"]), c["authorization_id"]] for c in rep["charged"]]
    rows += [["renewal", r["name"], usd(r["amount"]), r["authorization_id"]] for r in rep["renewed"]]
    rows += [[f"unpaid {f['kind']}", f["name"], usd(f["amount"]), f["reason"]] for f in rep["failed"]]
    table("recurring charges", ["what", "name", "amount", "authorization / reason"], rows)
    for s in rep["suspended"]:
        out.print(f"suspended {s['kind']} {s['name']} (unpaid: {s['reason']})")
    rec = rep["reclaim"]
    if rec["reclaimed"]:
        out.print(f"reclaimed {len(rec['reclaimed'])}; saved {usd(rec['saved'])} a period")


@provision_app.command("dues")
def dues(wallet: str | None = typer.Option(None, "--wallet"), as_json: bool = JsonOpt) -> None:
    """What wallets could not pay for: in grace, or suspended (and when it is reclaimed)."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return [d.to_dict() for d in await rt.provision.dues.all(wallet)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "unpaid",
        ["kind", "name", "wallet", "state", "amount", "reason", "grace until", "reclaim at"],
        [
            [d["kind"], d["name"], d["wallet_id"], d["state"], usd(d["amount"]), d["reason"],
             d["grace_until_us"], d["reclaim_at_us"] or ""]
            for d in rows
        ],
    )  # fmt: skip
