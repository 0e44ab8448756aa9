"""The loop of ``tollway demo business``, over tollway's real HTTP API: the owner
(the admin token) funds a wallet and hands a bootstrap credential; the agent (that
credential, then only the delegated token it collects) asks for a budget, buys a
domain, deploys the example ai_answer app, binds a name and prices it; customers
pay with the official ``x402`` client at the edge; the billing tick charges the
hosting; the P&L and the ledger's checks close it. Each step is reported as it
happens (``report``) and collected in the result."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import tollway.provision
from tollway.core.money import format_usd
from tollway.runtime import Runtime
from tollway.x402.config import DEVNET_ASSET

EXAMPLE = Path(tollway.provision.__file__).parent / "examples" / "ai_answer" / "app.py"
CATEGORIES = ["domains", "dns", "hosting", "ai_inference", "api_access"]
QUESTIONS = [
    "What is a toll road?",
    "Why do bridges charge tolls?",
    "What is an API?",
    "Name a prime number.",
    "What color is the sky?",
    "What is a wallet?",
    "What does a domain name do?",
    "Is a byte eight bits?",
]


@dataclass(frozen=True, slots=True)
class Plan:
    """What the demo sets up: the budget asked, the price of an answer, the load."""

    customers: int = 50
    concurrency: int = 4
    fund: str = "$5"
    budget: str = "$3"
    price: str = "$0.03"
    max_tokens: int = 16
    tld: str = "test"


class StepFailed(Exception):
    """A step of the loop did not do what it should: the demo stops there."""


Report = Callable[[str, dict[str, Any]], None]
Tick = Callable[[int, int], None]


@dataclass
class Business:
    """One run of the loop against a server at ``api`` (its edge at ``edge``)."""

    rt: Runtime
    api: str
    edge: str
    admin_token: str
    plan: Plan
    report: Report
    steps: list[dict[str, Any]] = field(default_factory=list)
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    deploy_charged: int = 0

    def step(self, name: str, text: str, **data: Any) -> dict[str, Any]:
        entry = {"step": name, "text": text, **data}
        self.steps.append(entry)
        self.report(text, entry)
        return entry

    async def call(
        self, http: httpx.AsyncClient, method: str, path: str, bearer: str, body: Any = None, ok: int = 200
    ) -> dict[str, Any]:
        r = await http.request(method, path, json=body, headers={"authorization": f"Bearer {bearer}"})
        if r.status_code != ok:
            raise StepFailed(f"{method} {path}: {r.status_code} {r.text[:500]}")
        out: dict[str, Any] = r.json()
        return out

    # ------------------------------------------------------------------ the loop

    async def run(self, tick: Tick) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.api, timeout=120) as http:
            wallet, boot = await self.owner_funds(http)
            token = await self.budget(http, wallet, boot)
            host = await self.open_shop(http, token)
            customers = await self.customers(http, host, tick)
            hosting, pnl = await self.hosting(http, token)
        return self.close(wallet, host, customers, hosting, pnl)

    async def owner_funds(self, http: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
        adm = self.admin_token
        wallet = await self.call(
            http, "POST", "/admin/wallets", adm, {"owner": "demo owner", "with_key": True}, ok=201
        )
        await self.call(http, "POST", f"/admin/wallets/{wallet['id']}/topup", adm, {"amount": self.plan.fund})
        boot = await self.call(
            http, "POST", f"/admin/wallets/{wallet['id']}/bootstrap", adm, {"name": "demo agent"}, ok=201
        )
        self.step(
            "owner",
            f"owner (admin token): wallet {wallet['id']} with address {wallet['evm_address']}, funded "
            f"{self.plan.fund}; bootstrap credential {boot['credential'][:16]}… handed to the agent",
            wallet_id=wallet["id"], evm_address=wallet["evm_address"], funded=self.plan.fund,
            bootstrap_id=boot["id"],
        )  # fmt: skip
        return wallet, str(boot["credential"])

    async def budget(self, http: httpx.AsyncClient, wallet: dict[str, Any], boot: str) -> str:
        ask = {
            "amount": self.plan.budget, "period": "monthly", "categories": CATEGORIES,
            "purpose": "run a paid question-answering API on a domain of its own",
        }  # fmt: skip
        req = await self.call(http, "POST", "/v1/wallet/budget-requests", boot, ask, ok=201)
        self.step(
            "budget_request",
            f"agent (bootstrap tw_boot_…): asks {self.plan.budget} a month for {', '.join(CATEGORIES)}"
            f" → {req['id']} {req['status']}",
            request_id=req["id"], caps=req["caps"], status=req["status"],
        )  # fmt: skip
        approved = await self.call(
            http, "POST", f"/admin/wallets/budget-requests/{req['id']}/approve", self.admin_token, {}
        )
        got = await self.call(http, "GET", f"/v1/wallet/budget-requests/{req['id']}", boot)
        token = got.get("token")
        if not token:
            raise StepFailed(f"the approved request {req['id']} carried no token: {got}")
        self.step(
            "budget_approved",
            f"owner approves {req['id']}; agent collects its token once: {token[:19]}… "
            f"({approved['token_id']})",
            token_id=approved["token_id"], token_prefix=token[:19], status=got["status"],
        )  # fmt: skip
        return str(token)

    async def open_shop(self, http: httpx.AsyncClient, token: str) -> str:
        p, tag = self.plan, f"as the agent (token {token[:19]}…)"
        domain, name = f"answers-{self.suffix}.{p.tld}", f"answers-{self.suffix}"
        d = await self.call(http, "POST", "/v1/broker/provision/domains", token, {"domain": domain}, ok=201)
        self.step("domain", f"{tag}: registers {domain} for {format_usd(d['charged'])}", domain=domain,
                  charged=d["charged"])  # fmt: skip
        bundle = _zipped({"app.py": EXAMPLE.read_text()})
        body = {"name": name, "entrypoint": "app:app", "bundle": bundle,
                "env": {"AI_MAX_TOKENS": str(p.max_tokens)}}  # fmt: skip
        dep = await self.call(http, "POST", "/v1/broker/provision/deployments", token, body, ok=201)
        self.deploy_charged = int(dep["charged"])
        self.step("deploy", f"{tag}: deploys the ai_answer app as {name} ({dep['url']}) for "
                  f"{format_usd(dep['charged'])}", deployment=name, url=dep["url"],
                  charged=dep["charged"])  # fmt: skip
        host = f"api.{domain}"
        bound = await self.call(
            http, "POST", f"/v1/broker/provision/deployments/{name}/hostnames", token, {"hostname": host}
        )
        self.step("bind", f"{tag}: binds {host} to it (a CNAME in its zone)", host=host,
                  hostnames=bound.get("hostnames"))  # fmt: skip
        rule = {"name": "answer", "host": host, "path": "/answer", "price": p.price,
                "description": "One answer from a small language model"}  # fmt: skip
        made = await self.call(http, "POST", "/v1/x402/rules", token, rule, ok=201)
        self.step("price", f"{tag}: prices GET {host}/answer at {p.price}, paid to {made['pay_to']}",
                  rule_id=made["id"], price=p.price, pay_to=made["pay_to"])  # fmt: skip
        return host

    async def customers(self, http: httpx.AsyncClient, host: str, tick: Tick) -> dict[str, Any]:
        from eth_account import Account
        from x402 import x402Client
        from x402.http.clients import x402HttpxClient
        from x402.mechanisms.evm.exact import register_exact_evm_client

        n, gate = self.plan.customers, asyncio.Semaphore(self.plan.concurrency)
        network = self.rt.settings.x402.network
        spend: Any = {"allowed_assets": [{"network": network, "asset": DEVNET_ASSET,
                                          "max_amount_per_payment": "1000000"}]}  # fmt: skip
        results: list[dict[str, Any]] = []

        async def one(i: int) -> None:
            async with gate:
                payer = Account.create()
                fund = {"address": payer.address, "amount": "$0.10"}
                await self.call(http, "POST", "/admin/x402/devnet/fund", self.admin_token, fund)
                client = x402Client()
                register_exact_evm_client(client, payer)
                client.set_spend_controls(spend)
                q = QUESTIONS[i % len(QUESTIONS)]
                async with x402HttpxClient(client, timeout=120) as c:
                    r = await c.get(f"{self.edge}/answer", params={"q": q}, headers={"host": host})
                paid = "payment-response" in r.headers
                res = {"customer": payer.address, "status": r.status_code, "paid": paid, "question": q}
                if r.status_code == 200:
                    res["answer"] = r.json().get("answer")
                else:
                    res["error"] = r.text[:300]
                results.append(res)
                tick(len(results), n)

        await asyncio.gather(*(one(i) for i in range(n)))
        ok = sum(1 for r in results if r["status"] == 200 and r["paid"])
        sample = next((r for r in results if r.get("answer")), None)
        self.step(
            "customers",
            f"{ok}/{n} customers paid {self.plan.price} each with the official x402 client (devnet) and got "
            f"an answer" + (f", e.g. {sample['question']!r} → {sample['answer']!r}" if sample else ""),
            paid=ok, customers=n, failed=[r for r in results if not (r["status"] == 200 and r["paid"])],
            sample=sample,
        )  # fmt: skip
        if ok != n:
            raise StepFailed(f"{n - ok} of {n} customers did not get a paid answer")
        return {"paid": ok, "customers": n}

    async def hosting(self, http: httpx.AsyncClient, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The billing tick after the traffic (the server's own ticks ran during it): the
        worker-seconds not yet billed are charged; then the P&L, as the agent."""
        rep = await self.rt.provision.tick()  # what `tollway provision tick` runs
        if rep["failed"]:
            raise StepFailed(f"recurring charges failed: {rep['failed']}")
        charged = sum(int(c["amount"]) for c in rep["charged"])
        pnl = await self.call(http, "GET", "/v1/wallet/pnl", token)
        metered = int(pnl["costs"]["by_category"].get("hosting", 0)) - self.deploy_charged
        per_second = self.rt.settings.provision.hosting_price_per_worker_second
        self.step(
            "hosting",
            f"billing tick: {format_usd(charged)} charged now for the worker-seconds since the last"
            f" tick; metered hosting in all {format_usd(metered)} at {per_second} micro-USD a"
            f" worker-second (besides the {format_usd(self.deploy_charged)} deploy)",
            charged=charged, metered=metered, report=rep,
        )  # fmt: skip
        return rep, pnl

    def close(
        self, wallet: dict[str, Any], host: str, customers: dict[str, Any], hosting: dict[str, Any],
        pnl: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        return {"wallet": wallet, "host": host, "customers": customers, "hosting": hosting, "pnl": pnl}


async def ledger_check(rt: Runtime) -> dict[str, Any]:
    """The ledger's zero-sum check, as `tollway ledger balances` prints it."""
    accts = await rt.ledger.accounts()
    total = sum(a.credits_posted - a.debits_posted for a in accts)
    return {"accounts": len(accts), "sum_of_balances": total, "ok": total == 0}


def balance_identity(pnl: dict[str, Any]) -> dict[str, Any]:
    """closing - opening = net + top-ups - withdrawals, and the P&L's own sums."""
    rev, costs = pnl["revenue"], pnl["costs"]
    moved = pnl["closing_balance"] - pnl["opening_balance"]
    expected = pnl["net"] + pnl["topups"] - pnl["withdrawals"]
    sums = (
        rev["total"] == sum(rev["by_route"].values())
        and costs["total"] == sum(costs["by_category"].values())
        and pnl["net"] == rev["total"] - costs["total"]
    )
    return {"balance_change": moved, "net_plus_topups_less_withdrawals": expected,
            "ok": moved == expected and sums, "sums_ok": sums}  # fmt: skip


def pricing(plan: Plan, pnl: dict[str, Any], customers: int, take_rate_bps: int) -> dict[str, Any]:
    """The numbers behind the price: per answer, the fee and the inference it costs;
    the fixed costs (domain, DNS, deploy, hosting); where it breaks even."""
    from tollway.core.money import parse_amount

    price = parse_amount(plan.price, "price")
    by = pnl["costs"]["by_category"]
    inference = int(by.get("inference", 0))
    per_answer = inference // customers if customers else 0
    fee = price * take_rate_bps // 10_000
    fixed = sum(int(v) for k, v in by.items() if k not in ("inference", "fees"))
    margin = price - fee - per_answer
    even = -(-fixed // margin) if margin > 0 else None
    return {"price": price, "take_rate_bps": take_rate_bps, "fee_per_answer": fee,
            "inference_per_answer": per_answer, "margin_per_answer": margin, "fixed_costs": fixed,
            "break_even_customers": even}  # fmt: skip


def _zipped(files: dict[str, str]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return base64.b64encode(buf.getvalue()).decode()
