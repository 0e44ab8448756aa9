"""The views' queries beyond the overview: plain reads, each bounded."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollway.console.rollups import DAY_US
from tollway.core.schema import api_keys as K
from tollway.core.schema import console_customers_daily as CD
from tollway.core.schema import console_models_hourly as MH
from tollway.core.schema import credit_grants as G
from tollway.core.schema import customers as C
from tollway.core.schema import ledger_accounts as A
from tollway.core.schema import ledger_transfers as T
from tollway.core.schema import provision_versions as PV
from tollway.core.schema import subscriptions as S
from tollway.core.schema import usage_events as U
from tollway.core.schema import wallet_authorizations as WA

LIST_MAX = 200
USAGE_DAYS = 30


async def customers(engine: AsyncEngine, now_us: int, customer_id: str | None = None) -> list[dict[str, Any]]:
    """Each customer's plan, balance, credits left and the last 30 UTC days' usage (the daily rollup)."""
    since = (now_us // DAY_US - USAGE_DAYS + 1) * DAY_US
    usage = (
        select(
            CD.c.customer_id.label("cid"),
            func.sum(CD.c.requests).label("requests"),
            func.sum(CD.c.input_tokens + CD.c.output_tokens).label("tokens"),
            func.sum(CD.c.cost).label("cost"),
        )
        .where(CD.c.day_us >= since)
        .group_by(CD.c.customer_id)
        .subquery()
    )
    GA = A.alias("ga")
    credits = (
        select(G.c.customer_id.label("cid"), func.sum(GA.c.credits_posted - GA.c.debits_posted).label("left"))
        .join(GA, GA.c.id == G.c.account_id)
        .where(G.c.expired_at_us.is_(None))
        .group_by(G.c.customer_id)
        .subquery()
    )
    q = (
        select(
            C.c.id,
            C.c.name,
            C.c.email,
            A.c.credits_posted - A.c.debits_posted,
            A.c.debits_pending,
            S.c.plan,
            S.c.status,
            usage.c.requests,
            usage.c.tokens,
            usage.c.cost,
            credits.c.left,
        )
        .join(A, A.c.id == C.c.account_id)
        .outerjoin(S, S.c.customer_id == C.c.id)
        .outerjoin(usage, usage.c.cid == C.c.id)
        .outerjoin(credits, credits.c.cid == C.c.id)
        .order_by(C.c.id)
        .limit(LIST_MAX)
    )
    if customer_id is not None:
        q = q.where(C.c.id == customer_id)
    async with engine.connect() as conn:
        return [
            {
                "id": r[0],
                "name": r[1],
                "email": r[2],
                "balance": int(r[3]),
                "held": int(r[4]),
                "plan": r[5],
                "plan_status": r[6],
                "requests": int(r[7] or 0),
                "tokens": int(r[8] or 0),
                "cost": int(r[9] or 0),
                "credits": int(r[10] or 0),
            }
            for r in await conn.execute(q)
        ]


async def keys(engine: AsyncEngine, customer_id: str) -> list[dict[str, Any]]:
    """A customer's API keys: prefixes and names only (the secret is never stored, nor shown)."""
    q = (
        select(K.c.id, K.c.prefix, K.c.name, K.c.scopes, K.c.created_at_us, K.c.revoked_at_us)
        .where(K.c.customer_id == customer_id)
        .order_by(K.c.created_at_us)
    )
    async with engine.connect() as conn:
        return [
            {
                "id": r[0],
                "prefix": r[1],
                "name": r[2],
                "scopes": json.loads(r[3]),
                "created_at_us": r[4],
                "revoked": r[5] is not None,
            }
            for r in await conn.execute(q)
        ]


async def models(engine: AsyncEngine, since_us: int) -> list[dict[str, Any]]:
    """Per model: requests, errors, mean latency, cache hit rate, 429s and budget refusals."""
    q = (
        select(
            MH.c.model,
            func.sum(MH.c.requests),
            func.sum(MH.c.errors),
            func.sum(MH.c.latency_ms),
            func.sum(MH.c.cache_hits),
            func.sum(MH.c.rate_limited),
            func.sum(MH.c.budget_refused),
            func.sum(MH.c.cost),
        )
        .where(MH.c.hour_us >= since_us)
        .group_by(MH.c.model)
        .order_by(MH.c.model)
    )
    async with engine.connect() as conn:
        out = []
        for m, n, err, lat, hits, rl, br, cost in await conn.execute(q):
            n = int(n)
            out.append(
                {
                    "model": m or "(none)",
                    "requests": n,
                    "errors": int(err),
                    "error_rate": int(err) / n if n else 0.0,
                    "latency_ms": int(lat) / n if n else 0.0,
                    "cache_hit_rate": int(hits) / n if n else 0.0,
                    "rate_limited": int(rl),
                    "budget_refused": int(br),
                    "cost": int(cost),
                }
            )
        return out


async def x402_by_route(engine: AsyncEngine, limit: int = 10_000) -> list[dict[str, Any]]:
    """Revenue per paid resource over the latest ``limit`` settled payments."""
    q = (
        select(U.c.metadata, U.c.amount)
        .where(U.c.meter == "x402")
        .order_by(U.c.created_at_us.desc())
        .limit(limit)
    )
    acc: dict[str, list[int]] = {}
    async with engine.connect() as conn:
        for meta, amount in await conn.execute(q):
            resource = str(json.loads(meta or "{}").get("resource") or "?")
            a = acc.setdefault(resource, [0, 0])
            a[0] += 1
            a[1] += int(amount)
    return [
        {"resource": r, "payments": n, "amount": a}
        for r, (n, a) in sorted(acc.items(), key=lambda x: -x[1][1])
    ]


async def wallet_caps(engine: AsyncEngine, wallet_id: str) -> list[dict[str, Any]]:
    """Spend against each of the wallet's caps: the limit accounts of tollway.wallets.caps
    (its spending limits and provider caps, per period)."""
    q = (
        select(A.c.id, A.c.name, A.c.credits_posted, A.c.debits_posted, A.c.debits_pending)
        .where(
            or_(
                A.c.id.startswith(f"wl_{wallet_id}_", autoescape=True),
                A.c.id.startswith(f"wp_{wallet_id}_", autoescape=True),
            )
        )
        .order_by(A.c.id.desc())
        .limit(50)
    )
    async with engine.connect() as conn:
        return [
            {"account": r[0], "name": r[1], "limit": int(r[2]), "spent": int(r[3]), "held": int(r[4])}
            for r in await conn.execute(q)
        ]


async def deployment_costs(engine: AsyncEngine) -> dict[str, int]:
    """What each deployment's versions cost (their wallet authorizations, captured)."""
    q = (
        select(PV.c.deployment_id, func.sum(WA.c.captured))
        .join(WA, WA.c.id == PV.c.authorization_id)
        .group_by(PV.c.deployment_id)
    )
    async with engine.connect() as conn:
        return {d: int(c or 0) for d, c in await conn.execute(q)}


async def zero_sum(engine: AsyncEngine) -> dict[str, Any]:
    """The ledger's invariant: every debit is someone's credit, posted and pending."""
    q = select(
        func.coalesce(func.sum(A.c.debits_posted), 0),
        func.coalesce(func.sum(A.c.credits_posted), 0),
        func.coalesce(func.sum(A.c.debits_pending), 0),
        func.coalesce(func.sum(A.c.credits_pending), 0),
        func.count(),
    )
    async with engine.connect() as conn:
        dp, cp, dpe, cpe, n = (await conn.execute(q)).one()
    return {
        "accounts": int(n),
        "debits_posted": int(dp),
        "credits_posted": int(cp),
        "debits_pending": int(dpe),
        "credits_pending": int(cpe),
        "ok": dp == cp and dpe == cpe,
    }


async def accounts(engine: AsyncEngine, prefix: str = "", kind: str = "") -> list[dict[str, Any]]:
    conds: list[ColumnElement[bool]] = []
    if prefix:
        conds.append(A.c.id.startswith(prefix, autoescape=True))
    if kind:
        conds.append(A.c.kind == kind)
    q = select(A).order_by(A.c.id).limit(LIST_MAX)
    if conds:
        q = q.where(and_(*conds))
    async with engine.connect() as conn:
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "name": r.name,
                "customer_id": r.customer_id,
                "balance": r.credits_posted - r.debits_posted,
                "debits_pending": r.debits_pending,
                "credits_pending": r.credits_pending,
            }
            for r in await conn.execute(q)
        ]


async def transfers(
    engine: AsyncEngine, *, transfer_id: str = "", account_id: str = ""
) -> list[dict[str, Any]]:
    """A transfer by id, or an account's latest transfers (either side), newest first."""
    if transfer_id:
        cond = T.c.id == transfer_id
    elif account_id:
        cond = or_(T.c.debit_account_id == account_id, T.c.credit_account_id == account_id)
    else:
        cond = T.c.id.is_not(None)
    q = select(T).where(cond).order_by(T.c.id.desc()).limit(LIST_MAX)
    async with engine.connect() as conn:
        return [
            {
                "id": r.id,
                "debit": r.debit_account_id,
                "credit": r.credit_account_id,
                "amount": r.amount,
                "description": r.description,
                "created_at_us": r.created_at_us,
                "pending": r.expires_at_us is not None,
            }
            for r in await conn.execute(q)
        ]


async def escalations_of(engine: AsyncEngine, agent: str, stored_session_id: str) -> list[dict[str, Any]]:
    from tollway.agents.store import public
    from tollway.core.schema import agent_escalations as E

    q = (
        select(E)
        .where(E.c.agent == agent, E.c.session_id == stored_session_id)
        .order_by(E.c.created_at_us)
        .limit(LIST_MAX)
    )
    async with engine.connect() as conn:
        return [{**r._asdict(), "session_id": public(r.session_id)} for r in await conn.execute(q)]
