"""Profit and loss of a wallet, derived only from its ledger transfers.

Every posted transfer touching the wallet's account in the period (single-
phase transfers, and the posts of holds; a void moves nothing) falls in
exactly one line:

- **revenue**: a credit carrying a usage event of meter ``x402_earnings``
  (the earnings' convention: metadata ``host``, ``path``, ``rule_id``), by
  route (host + path);
- **costs**, by category: a wallet authorization's capture (usage meter
  ``wallet_payment``, its metadata names the category and the
  authorization): ``hosting``, ``domains``, ``dns``, ``inference``
  (``ai_inference``), ``paid_fetches`` (a payment the broker signed), or the
  authorization's own category; a transfer to ``sys_fees`` (``fees``); any
  other debit with a usage event, by its metadata's ``category`` (else its
  meter); anything else paid out (``other``);
- **top-ups**: any other credit (money put in, not earned);
- **withdrawals**: a debit back to ``sys_funding`` or a customer's account.

So, by construction and tested with generated activity::

    revenue.total == Σ revenue.by_route
    costs.total   == Σ costs.by_category
    net           == revenue.total - costs.total
    closing_balance - opening_balance == net + topups - withdrawals

Holds still open (money reserved, not yet spent) are shown apart as
``committed``. Per deployment, revenue is what its hosts earned and costs
are the captures attributed to it (:func:`deployment_pnl`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.core.errors import invalid
from tollway.core.schema import POST_PENDING
from tollway.core.schema import ledger_accounts as LA
from tollway.core.schema import ledger_pending as LP
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import provision_deployments as P
from tollway.core.schema import provision_versions as V
from tollway.core.schema import usage_events as U
from tollway.core.schema import wallet_authorizations as A

EARNINGS = "x402_earnings"
PAYMENT = "wallet_payment"
FEES_ACCOUNT = "sys_fees"
_CATEGORY = {"ai_inference": "inference"}
_MAX_US = 253_402_300_800_000_000  # 10000-01-01: past any period


@dataclass(frozen=True, slots=True)
class Line:
    """One posted transfer, classified."""

    transfer_id: str
    kind: str  # revenue | cost | topup | withdrawal
    amount: int  # signed for the balance: + in, - out
    group: str  # the route (revenue), the category (costs), the counterparty (the rest)
    created_at_us: int
    host: str = ""
    path: str = ""
    authorization_id: str = ""
    token_id: str = ""
    deployment: str = ""  # usage metadata's deployment_id or deployment, if any


@dataclass
class Report:
    wallet_id: str
    account_id: str
    from_us: int
    to_us: int
    opening: int
    lines: list[Line] = field(default_factory=list)
    committed: int = 0

    def to_dict(self) -> dict[str, Any]:
        by_route: dict[str, int] = defaultdict(int)
        by_category: dict[str, int] = defaultdict(int)
        by_token: dict[str, int] = defaultdict(int)
        topups = withdrawals = 0
        for ln in self.lines:
            if ln.kind == "revenue":
                by_route[ln.group] += ln.amount
            elif ln.kind == "cost":
                by_category[ln.group] -= ln.amount
                if ln.token_id:
                    by_token[ln.token_id] -= ln.amount
            elif ln.kind == "topup":
                topups += ln.amount
            else:
                withdrawals -= ln.amount
        revenue, costs = sum(by_route.values()), sum(by_category.values())
        closing = self.opening + sum(ln.amount for ln in self.lines)
        return {
            "object": "wallet_pnl",
            "wallet_id": self.wallet_id,
            "account_id": self.account_id,
            "from_us": self.from_us,
            "to_us": self.to_us,
            "currency": "usd",
            "revenue": {"total": revenue, "by_route": dict(sorted(by_route.items()))},
            "costs": {
                "total": costs,
                "by_category": dict(sorted(by_category.items())),
                "by_token": dict(sorted(by_token.items())),
            },
            "net": revenue - costs,
            "topups": topups,
            "withdrawals": withdrawals,
            "opening_balance": self.opening,
            "closing_balance": closing,
            "committed": self.committed,
            "transfers": len(self.lines),
        }


def month_of(now_us: int) -> tuple[int, int]:
    """The UTC calendar month holding ``now_us``: [start, end) in µs."""
    d = dt.datetime.fromtimestamp(now_us / 1_000_000, dt.UTC)
    start = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)
    return _us(start), _us(end)


def _us(d: dt.datetime) -> int:
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def parse_when(value: str | int | None, param: str) -> int | None:
    """A bound: µs since the epoch, or an ISO 8601 date or time (UTC unless it says)."""
    if value is None or value == "":
        return None
    bad = invalid(
        f"invalid_{param}", f"{param} is an ISO 8601 date or time, or microseconds since the epoch", param
    )
    if isinstance(value, bool):
        raise bad
    try:
        if isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit()):
            us = int(value)
        else:
            d = dt.datetime.fromisoformat(str(value))
            us = _us(d if d.tzinfo else d.replace(tzinfo=dt.UTC))
    except (ValueError, OverflowError):
        raise bad from None
    if not 0 <= us < _MAX_US:
        raise bad
    return us


def period(now_us: int, from_: str | int | None, to: str | int | None) -> tuple[int, int]:
    """[from, to): the given bounds, the current month by default."""
    start, end = month_of(now_us)
    f, t = parse_when(from_, "from"), parse_when(to, "to")
    f = start if f is None else f
    t = (end if from_ is None else now_us + 1) if t is None else t
    if t <= f:
        raise invalid("invalid_period", "to must be after from", "to")
    return f, t


def _sign(account_id: str) -> Any:
    return case((T.c.credit_account_id == account_id, T.c.amount), else_=-T.c.amount)


_POSTED = T.c.flags.in_((0, POST_PENDING))  # a pending reserves; a void or expiry moves nothing


async def wallet_pnl(
    engine: AsyncEngine, wallet_id: str, account_id: str, from_us: int, to_us: int
) -> Report:
    """The wallet's P&L over [from_us, to_us)."""
    touches = or_(T.c.debit_account_id == account_id, T.c.credit_account_id == account_id)
    async with engine.connect() as conn:
        opening = (
            await conn.execute(
                select(func.coalesce(func.sum(_sign(account_id)), 0)).where(
                    touches, _POSTED, T.c.created_at_us < from_us
                )
            )
        ).scalar()
        rows = (
            await conn.execute(
                select(
                    T.c.id,
                    T.c.debit_account_id,
                    T.c.credit_account_id,
                    T.c.amount,
                    T.c.created_at_us,
                    U.c.meter,
                    U.c.metadata,
                    LA.c.kind,
                )
                .select_from(
                    T.outerjoin(U, U.c.transfer_id == T.c.id).join(
                        LA,
                        LA.c.id
                        == case(
                            (T.c.credit_account_id == account_id, T.c.debit_account_id),
                            else_=T.c.credit_account_id,
                        ),
                    )
                )
                .where(touches, _POSTED, T.c.created_at_us >= from_us, T.c.created_at_us < to_us)
                .order_by(T.c.id)
            )
        ).all()
        committed = (
            await conn.execute(
                select(func.coalesce(func.sum(LP.c.amount), 0)).where(LP.c.debit_account_id == account_id)
            )
        ).scalar()
        meta = {r[0]: json.loads(r[6]) if r[6] else {} for r in rows}
        auth_ids = {str(m.get("authorization_id")) for m in meta.values() if m.get("authorization_id")}
        memos: dict[str, str] = {}
        if auth_ids:
            q = select(A.c.id, A.c.memo).where(A.c.id.in_(sorted(auth_ids)))
            memos = {i: m for i, m in await conn.execute(q)}
    report = Report(wallet_id, account_id, from_us, to_us, int(opening or 0), committed=int(committed or 0))
    seen: set[str] = set()
    for tid, debit, _credit, amount, at, meter, _m, counterparty in rows:
        if tid in seen:  # one usage event per transfer; never count a transfer twice
            continue
        seen.add(tid)
        report.lines.append(
            _classify(tid, debit, amount, at, meter, meta[tid], counterparty, account_id, memos)
        )
    return report


def _classify(
    tid: str,
    debit: str,
    amount: int,
    at: int,
    meter: str | None,
    m: dict[str, Any],
    counterparty: str,
    account_id: str,
    memos: dict[str, str],
) -> Line:
    inbound = debit != account_id
    dep = str(m.get("deployment_id") or m.get("deployment") or "")
    if inbound:
        if meter == EARNINGS:
            host, path = str(m.get("host", "")), str(m.get("path", ""))
            return Line(tid, "revenue", amount, f"{host}{path}", at, host=host, path=path, deployment=dep)
        return Line(tid, "topup", amount, counterparty, at)
    if meter == PAYMENT:
        auth = str(m.get("authorization_id", ""))
        memo = memos.get(auth, "")
        cat = str(m.get("category", "other"))
        group = "paid_fetches" if memo.startswith("x402 ") else _CATEGORY.get(cat, cat)
        return Line(
            tid, "cost", -amount, group, at, authorization_id=auth, token_id=str(m.get("token_id", "")),
            deployment=dep or _deployment_of(memo),
        )  # fmt: skip
    if debit == account_id and counterparty == "fees":
        return Line(tid, "cost", -amount, "fees", at)
    if meter is not None:  # a charge on another path (e.g. inference with an agent token)
        cat = str(m.get("category") or meter)
        token = str(m.get("token_id", ""))
        return Line(tid, "cost", -amount, _CATEGORY.get(cat, cat), at, token_id=token, deployment=dep)
    if counterparty in ("funding", "customer"):
        return Line(tid, "withdrawal", -amount, counterparty, at)
    return Line(tid, "cost", -amount, "other", at)


_HOSTING = re.compile(r"^hosting deployment (\S+)")


def _deployment_of(memo: str) -> str:
    """The deployment a capture paid for, by the provisioner's memos: its id
    (``hosting deployment DEP (NAME): metered use``, the recurring charge) or
    ``name:NAME`` (``deploy NAME``, a version's upload)."""
    m = _HOSTING.match(memo)
    if m:
        return m.group(1)
    parts = memo.split()
    return f"name:{parts[1]}" if len(parts) >= 2 and parts[0] == "deploy" else ""


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a deployment is known by: its id, name, hosts, and the authorizations of its versions."""

    id: str
    name: str
    hosts: tuple[str, ...]
    authorizations: frozenset[str]


def deployment_pnl(report: Report, dep: Deployment, since_us: int | None = None) -> dict[str, int]:
    """One deployment's share of a wallet's P&L (since ``since_us``): revenue is
    what its hosts earned; costs are the captures of its versions'
    authorizations, of authorizations whose memo names it (``deploy NAME``, the
    recurring ``hosting deployment DEP …``), and of usage whose metadata names
    it (``deployment_id``)."""
    revenue = costs = 0
    names = {dep.id, f"name:{dep.name}"}
    for ln in report.lines:
        if since_us is not None and ln.created_at_us < since_us:
            continue
        if ln.kind == "revenue" and (ln.host in dep.hosts or ln.deployment in names):
            revenue += ln.amount
        elif ln.kind == "cost" and (ln.authorization_id in dep.authorizations or ln.deployment in names):
            costs -= ln.amount
    return {"revenue": revenue, "costs": costs, "net": revenue - costs}


async def deployments(
    engine: AsyncEngine, wallet_id: str, apps_domain: str, born_before_us: int | None = None
) -> list[Deployment]:
    """The wallet's live deployments (made before ``born_before_us``), with their
    hosts (``NAME.<apps_domain>`` and those bound) and their versions' authorizations."""
    cond = [P.c.wallet_id == wallet_id, P.c.status == "active"]
    if born_before_us is not None:
        cond.append(P.c.created_at_us <= born_before_us)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(P.c.id, P.c.name, P.c.hostnames).where(*cond).order_by(P.c.name))
        ).all()
        auths: dict[str, set[str]] = {r[0]: set() for r in rows}
        if auths:
            q = select(V.c.deployment_id, V.c.authorization_id).where(V.c.deployment_id.in_(list(auths)))
            for dep_id, auth_id in await conn.execute(q):
                if auth_id:
                    auths[dep_id].add(auth_id)
    return [Deployment(i, n, (f"{n}.{apps_domain}", *json.loads(h)), frozenset(auths[i])) for i, n, h in rows]


async def pnl(
    engine: AsyncEngine,
    wallet_id: str,
    account_id: str,
    apps_domain: str,
    now_us: int,
    from_: str | int | None = None,
    to: str | int | None = None,
) -> dict[str, Any]:
    """The wallet's P&L over the period (default: this month), with each live
    deployment's share: what ``GET /v1/wallet/pnl``, the admin route and
    ``tollway wallet pnl`` show."""
    f, t = period(now_us, from_, to)
    report = await wallet_pnl(engine, wallet_id, account_id, f, t)
    deps = await deployments(engine, wallet_id, apps_domain)
    return {
        **report.to_dict(),
        "deployments": [{"id": d.id, "name": d.name, **deployment_pnl(report, d)} for d in deps],
    }
