"""The operator's pages (and the request log, which a customer sees for their own keys only)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from tollway.agents.store import scoped
from tollway.console import evals as console_evals
from tollway.console import pnl as console_pnl
from tollway.console import queries
from tollway.console.customer import account_view
from tollway.console.guard import console, form, hidden, operator, own, viewer
from tollway.console.overview import RANGES, overview, window
from tollway.console.render import NO_STORE, page
from tollway.console.sessions import Viewer
from tollway.core.lazyroute import LazyRoute
from tollway.core.schema import request_log as L
from tollway.x402 import payments as x402_payments

router = APIRouter(route_class=LazyRoute, prefix="/console", include_in_schema=False)

_ID = r"^[A-Za-z0-9_.:-]{1,128}$"
_RANGE = "^(" + "|".join(RANGES) + ")$"
ACTOR = "console"
DENIED = "denied in the console"  # a budget request's reason when the operator gave none


# ------------------------------------------------------------------ overview


@router.get("/overview", response_class=HTMLResponse)
async def overview_page(
    request: Request, range: str = Query("24h", pattern=_RANGE), v: Viewer = Depends(operator)
) -> Response:
    rt = console(request).rt
    data = await overview(rt.engine, rt.clock.now_us(), range)
    names = [a["name"] for a in await rt.agents.registry.agents()]
    return page(
        request,
        "overview.html",
        v,
        "overview",
        data=data,
        eval_latest=await console_evals.latest(rt.evals, names),
        ranges=list(RANGES),
        data_url="/console/overview.json",
    )


@router.get("/overview.json")
async def overview_json(
    request: Request, range: str = Query("24h", pattern=_RANGE), v: Viewer = Depends(operator)
) -> Response:
    rt = console(request).rt
    return JSONResponse(await overview(rt.engine, rt.clock.now_us(), range), headers=NO_STORE)


# ----------------------------------------------------------------- customers


@router.get("/customers", response_class=HTMLResponse)
async def customers_page(request: Request, v: Viewer = Depends(operator)) -> Response:
    rt = console(request).rt
    rows = await queries.customers(rt.engine, rt.clock.now_us())
    return page(request, "customers.html", v, "customers", customers=rows)


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
async def customer_page(customer_id: str, request: Request, v: Viewer = Depends(operator)) -> Response:
    ctx = await account_view(console(request).rt, customer_id)
    return page(request, "account.html", v, "customers", **ctx)


# --------------------------------------------------------------- request log


@router.get("/requests", response_class=HTMLResponse)
async def requests_page(
    request: Request,
    customer_id: str | None = Query(None, pattern=_ID),
    model: str | None = Query(None, max_length=100),
    status: int | None = Query(None, ge=100, le=599),
    cache: str | None = Query(None, pattern="^(HIT|MISS|BYPASS)$"),
    before: str | None = Query(None, pattern=_ID),
    v: Viewer = Depends(viewer),
) -> Response:
    if not v.operator:
        if customer_id is not None:
            own(v, customer_id)
        customer_id = v.customer_id
    rt = console(request).rt
    await rt.gateway.log.flush()
    rows = await rt.gateway.log.query(
        limit=51,
        before=before or None,
        customer_id=customer_id or None,
        model=model or None,
        status=status,
        cache=cache or None,
    )
    more = len(rows) > 50
    rows = rows[:50]
    filters = {
        "customer_id": customer_id or "",
        "model": model or "",
        "status": status or "",
        "cache": cache or "",
    }
    return page(
        request,
        "requests.html",
        v,
        "requests" if v.operator else "me",
        rows=rows,
        filters=filters,
        next_before=rows[-1]["id"] if more else None,
    )


@router.get("/requests/{request_id}", response_class=HTMLResponse)
async def request_page(request_id: str, request: Request, v: Viewer = Depends(viewer)) -> Response:
    rt = console(request).rt
    await rt.gateway.log.flush()
    async with rt.engine.connect() as conn:
        row = (await conn.execute(select(L).where(L.c.id == request_id))).mappings().first()
    if row is None:
        raise hidden()
    own(v, row["customer_id"])
    return page(request, "request.html", v, "requests" if v.operator else "me", row=dict(row))


# ------------------------------------------------------------------- gateway


@router.get("/gateway", response_class=HTMLResponse)
async def gateway_page(
    request: Request, range: str = Query("24h", pattern=_RANGE), v: Viewer = Depends(operator)
) -> Response:
    rt = console(request).rt
    since, _ = window(rt.clock.now_us(), range)
    rows = await queries.models(rt.engine, since)
    registry = sorted(rt.inference.configs)
    return page(
        request,
        "gateway.html",
        v,
        "gateway",
        models=rows,
        registry=registry,
        range=range,
        ranges=list(RANGES),
    )


# ---------------------------------------------------------------------- x402


@router.get("/x402", response_class=HTMLResponse)
async def x402_page(request: Request, v: Viewer = Depends(operator)) -> Response:
    rt = console(request).rt
    return page(
        request,
        "x402.html",
        v,
        "x402",
        rules=[r.model_dump() for r in rt.paywall.rules.rules],
        source=rt.paywall.source,
        payments=await x402_payments.payments(rt.engine, limit=50),
        revenue=await x402_payments.revenue(rt.engine),
        by_route=await queries.x402_by_route(rt.engine),
    )


# ------------------------------------------------------------------- wallets


@router.get("/wallets", response_class=HTMLResponse)
async def wallets_page(request: Request, v: Viewer = Depends(operator)) -> Response:
    rt = console(request).rt
    wallets: list[dict[str, Any]] = []
    frozen: list[dict[str, Any]] = []
    for w in await rt.wallets.all():
        balance, available = await rt.wallets.balance(w)
        tokens = await rt.wallets.tokens(w.id)
        frozen += [t.to_dict() for t in tokens if t.frozen_at_us is not None and t.revoked_at_us is None]
        wallets.append(
            {
                "id": w.id,
                "owner": w.owner,
                "customer_id": w.customer_id,
                "balance": balance,
                "available": available,
                "tokens": len(tokens),
                "caps": await queries.wallet_caps(rt.engine, w.id),
                "limits": [sl.model_dump() for sl in w.policy.spending_limits],
                "approval_threshold": w.policy.approval_threshold,
            }
        )
    pending = [d.to_dict() for d in await rt.authorizer.pending()]
    budget_requests = await rt.budget_requests.list("pending")
    audit = await rt.wallets.audit.query(limit=50)
    return page(
        request,
        "wallets.html",
        v,
        "wallets",
        wallets=wallets,
        pending=pending,
        budget_requests=budget_requests,
        frozen=frozen,
        audit=audit,
    )


@router.post("/wallets/approvals/{auth_id}/{decision}")
async def decide(auth_id: str, decision: str, request: Request, v: Viewer = Depends(operator)) -> Response:
    await form(request, v)
    rt = console(request).rt
    if decision == "approve":
        await rt.authorizer.approve(auth_id, ACTOR)
    elif decision == "deny":
        await rt.authorizer.deny(auth_id, ACTOR)
    else:
        raise hidden()
    return RedirectResponse("/console/wallets", status_code=303)


@router.post("/wallets/budget-requests/{request_id}/{decision}")
async def decide_budget(
    request_id: str, decision: str, request: Request, v: Viewer = Depends(operator)
) -> Response:
    """Approve with the caps the agent asked, or with the amount and the most a
    payment may take as the operator edited them (the token is issued at the
    agent's next read, its secret shown only there); or deny with the form's reason."""
    fields = await form(request, v)
    requests = console(request).rt.budget_requests
    if decision == "approve":
        edits = {k: fields[k].strip() for k in ("amount", "max_per_payment") if fields.get(k, "").strip()}
        caps = None
        if edits:  # the caps asked, with the operator's edits (checked as the API checks them)
            caps = {**(await requests.get(request_id))["caps"], **edits}
        await requests.approve(request_id, caps, ACTOR)
    elif decision == "deny":
        await requests.deny(request_id, fields.get("reason", "").strip() or DENIED, ACTOR)
    else:
        raise hidden()
    return RedirectResponse("/console/wallets", status_code=303)


@router.get("/wallets/{wallet_id}/pnl", response_class=HTMLResponse)
async def wallet_pnl_page(
    wallet_id: str,
    request: Request,
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
    v: Viewer = Depends(operator),
) -> Response:
    rt = console(request).rt
    w = await rt.wallets.get(wallet_id)
    p = await console_pnl.wallet(rt, w, from_ or None, to or None)
    return page(request, "pnl.html", v, "deployments", p=p)


@router.post("/wallets/tokens/{token_id}/unfreeze")
async def unfreeze(token_id: str, request: Request, v: Viewer = Depends(operator)) -> Response:
    await form(request, v)
    await console(request).rt.wallets.unfreeze(token_id, actor=ACTOR)
    return RedirectResponse("/console/wallets", status_code=303)


# -------------------------------------------------------------------- agents


@router.get("/agents", response_class=HTMLResponse)
async def agents_page(request: Request, v: Viewer = Depends(operator)) -> Response:
    rt = console(request).rt
    agents = await rt.agents.registry.agents()
    sessions = []
    for a in agents:
        for s in await rt.agents.store.sessions(a["name"], None, limit=50):
            sessions.append({**s.to_dict(), "stored_id": s.id, "customer_id": s.customer_id})
    sessions.sort(key=lambda s: -int(s["updated_at_us"]))
    runs = await console_evals.runs(rt.evals)
    escalations = [
        {**e, "stored_id": scoped(e["customer_id"], e["session_id"])}
        for e in await rt.agents.store.escalations("open", limit=100)
    ]
    return page(
        request,
        "agents.html",
        v,
        "agents",
        agents=agents,
        sessions=sessions[:100],
        escalations=escalations,
        eval_runs=[r for r in runs if r["kind"] == "run"],
        comparisons=[r for r in runs if r["kind"] == "compare"],
    )


@router.get("/evals/{run_id}", response_class=HTMLResponse)
async def eval_run_page(run_id: str, request: Request, v: Viewer = Depends(operator)) -> Response:
    run = await console_evals.run(console(request).rt.evals, run_id)
    return page(request, "eval_run.html", v, "agents", run=run)


@router.get("/agents/{agent}/session", response_class=HTMLResponse)
async def session_page(
    agent: str, request: Request, id: str = Query(..., max_length=200), v: Viewer = Depends(operator)
) -> Response:
    rt = console(request).rt
    sid = await rt.agents.store.find(agent, id)
    s = await rt.agents.store.load(agent, sid, None)
    messages = await rt.agents.store.messages(agent, sid, limit=500)
    escalations = await queries.escalations_of(rt.engine, agent, sid)
    return page(
        request,
        "session.html",
        v,
        "agents",
        session={**s.to_dict(), "customer_id": s.customer_id, "stored_id": s.id},
        messages=[m.to_dict() for m in messages],
        escalations=escalations,
    )


@router.post("/escalations/{escalation_id}/reply")
async def reply(escalation_id: str, request: Request, v: Viewer = Depends(operator)) -> Response:
    fields = await form(request, v)
    rt = console(request).rt
    esc = await rt.agents.store.escalation(escalation_id)
    await rt.agents.answer_escalation(
        escalation_id, fields.get("content", ""), fields.get("by") or "operator"
    )
    stored = scoped(esc["customer_id"], esc["session_id"])
    return RedirectResponse(
        f"/console/agents/{quote(esc['agent'])}/session?id={quote(stored)}", status_code=303
    )


# ------------------------------------------------------- deployments, domains


@router.get("/deployments", response_class=HTMLResponse)
async def deployments_page(request: Request, v: Viewer = Depends(operator)) -> Response:
    rt = console(request).rt
    costs = await queries.deployment_costs(rt.engine)
    deployments = [{**d, "cost": costs.get(d["id"], 0)} for d in await rt.provision.deployments.all()]
    domains = [d.to_dict() for d in await rt.provision.domains.all()]
    return page(
        request,
        "deployments.html",
        v,
        "deployments",
        deployments=deployments,
        domains=domains,
        pnl=await console_pnl.this_month(rt),
    )


# -------------------------------------------------------------------- ledger


@router.get("/ledger", response_class=HTMLResponse)
async def ledger_page(
    request: Request,
    prefix: str = Query("", max_length=64),
    kind: str = Query("", max_length=32),
    transfer_id: str = Query("", pattern=r"^[A-Za-z0-9_.:-]{0,64}$"),
    account_id: str = Query("", pattern=r"^[A-Za-z0-9_.:-]{0,64}$"),
    v: Viewer = Depends(operator),
) -> Response:
    rt = console(request).rt
    return page(
        request,
        "ledger.html",
        v,
        "ledger",
        check=await queries.zero_sum(rt.engine),
        accounts=await queries.accounts(rt.engine, prefix, kind),
        transfers=await queries.transfers(rt.engine, transfer_id=transfer_id, account_id=account_id),
        q={"prefix": prefix, "kind": kind, "transfer_id": transfer_id, "account_id": account_id},
    )
