"""Billing over HTTP: plans, the caller's subscription, entitlements, usage
and the invoice preview under ``/v1``; subscriptions, credit grants and
usage for any customer under ``/admin``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from tollway.api.auth import require_admin, require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import Strict
from tollway.billing import usage as U
from tollway.billing.preview import preview
from tollway.billing.service import plan_dict
from tollway.core import jsonparse
from tollway.core.errors import invalid
from tollway.identity.keys import ApiKey

router = APIRouter(route_class=JsonRoute, tags=["billing"])
admin = APIRouter(
    route_class=JsonRoute, prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)]
)

_DAY = r"^\d{4}-\d{2}-\d{2}$"
_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class PlanIn(Strict):
    plan: str = Field(min_length=1, max_length=64)


class CheckIn(Strict):
    feature: str = Field(min_length=1, max_length=100)
    amount: int = Field(1, ge=1, le=2**62)
    consume: bool = Field(False, description="Use the amount now (quota features), not only check it.")


class EventsIn(Strict):
    events: list[Any] = Field(
        description="Usage events: {id, feature, quantity, model?, timestamp_us?, metadata?}"
    )


class CreditIn(Strict):
    amount: int | str = Field(description='Micro-USD, or dollars like "$5".')
    category: str = Field("promotional", pattern=r"^(paid|promotional)$")
    priority: int = Field(50, ge=0, le=100)
    name: str = Field("", max_length=200)
    expires_at_us: int | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)


def _range(start: str | None, end: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    a = U.parse_day(start, "start") if start else today - dt.timedelta(days=30)
    b = U.parse_day(end, "end") if end else today
    if b < a:
        raise invalid("invalid_range", "end is before start", "end")
    return a, b


def _today(request: Request) -> dt.date:
    return dt.datetime.fromtimestamp(runtime(request).clock.now_us() / 1e6, dt.UTC).date()


# ------------------------------------------------------------------ customer


@router.get("/v1/billing/plans", summary="The plans a customer can subscribe to")
async def plans(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = runtime(request).billing
    return {"object": "list", "data": [plan_dict(p, b.rates[k]) for k, p in b.plans.items()]}


@router.get("/v1/billing/subscription", summary="The calling customer's subscription")
async def subscription(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "billing:read")
    return (await runtime(request).billing.subscriptions.get(key.customer_id)).to_dict()


@router.post("/v1/billing/subscription", summary="Subscribe to a plan or change plan (without Stripe)")
async def subscribe(body: PlanIn, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "billing:write")
    return (await runtime(request).billing.subscriptions.subscribe(key.customer_id, body.plan)).to_dict()


@router.delete("/v1/billing/subscription", summary="Cancel the subscription (at the period's end by default)")
async def cancel(
    request: Request, at_period_end: bool = Query(True), key: ApiKey = Depends(require_key)
) -> dict[str, Any]:
    require_scope(key, "billing:write")
    subs = runtime(request).billing.subscriptions
    return (await subs.cancel(key.customer_id, at_period_end=at_period_end)).to_dict()


@router.get("/v1/billing/preview", summary="Invoice preview of the current period")
async def invoice_preview(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "billing:read")
    return await preview(runtime(request).billing, key.customer_id)


@router.get("/v1/entitlements", summary="The features and quotas of the calling customer's plan")
async def entitlements(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = runtime(request).billing
    s = b.standing(key.customer_id, key.billing)
    return {
        "object": "entitlements",
        "customer_id": key.customer_id,
        "plan": s.plan.lookup_key,
        "status": s.status,
        "features": s.plan.features,
        "quotas": await b.quota_status(s),
    }


@router.post("/v1/entitlements/check", summary="May the caller use this feature (and amount) now?")
async def check(body: CheckIn, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = runtime(request).billing
    s = b.standing(key.customer_id, key.billing)
    if body.consume:  # using a quota records usage: the scope of /v1/usage/events
        require_scope(key, "usage:write")
        await b.consume(s, body.feature, body.amount)
    else:
        await b.check(s, body.feature, body.amount)
    return {"object": "entitlement_check", "feature": body.feature, "amount": body.amount, "allowed": True}


_EVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EventsIn.model_json_schema()}},
    }
}


async def _events(request: Request) -> Any:
    """The ``events`` of an ingest body, parsed with orjson (batches are large)."""
    body = jsonparse.body(await request.body())
    if not isinstance(body, dict) or set(body) != {"events"}:
        raise invalid("invalid_events", 'the body is {"events": [...]} and nothing else', "events")
    return body["events"]


@router.post(
    "/v1/usage/events", summary="Record usage events (idempotent by event id)", openapi_extra=_EVENTS_BODY
)
async def ingest(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "usage:write")
    rt = runtime(request)
    events = await _events(request)
    return {"object": "usage_ingest", **await U.ingest(rt.engine, rt.clock, key.customer_id, events)}


@router.get("/v1/usage/rollups", summary="The calling customer's daily usage rollups")
async def my_rollups(
    request: Request,
    start: str | None = Query(None, pattern=_DAY),
    end: str | None = Query(None, pattern=_DAY),
    key: ApiKey = Depends(require_key),
) -> dict[str, Any]:
    require_scope(key, "billing:read")
    a, b = _range(start, end, _today(request))
    rows = await U.rollups(runtime(request).engine, start=a, end=b, customer_id=key.customer_id)
    return {"object": "list", "data": rows}


# --------------------------------------------------------------------- admin


@admin.get("/customers/{customer_id}/subscription", summary="A customer's subscription")
async def admin_subscription(customer_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).billing.subscriptions.get(customer_id)).to_dict()


@admin.put("/customers/{customer_id}/subscription", summary="Subscribe a customer or change its plan")
async def admin_subscribe(customer_id: str, body: PlanIn, request: Request) -> dict[str, Any]:
    return (await runtime(request).billing.subscriptions.subscribe(customer_id, body.plan)).to_dict()


@admin.delete("/customers/{customer_id}/subscription", summary="Cancel a customer's subscription")
async def admin_cancel(
    customer_id: str, request: Request, at_period_end: bool = Query(True)
) -> dict[str, Any]:
    subs = runtime(request).billing.subscriptions
    return (await subs.cancel(customer_id, at_period_end=at_period_end)).to_dict()


@admin.post("/customers/{customer_id}/credits", status_code=201, summary="Grant prepaid credit")
async def grant(customer_id: str, body: CreditIn, request: Request) -> dict[str, Any]:
    g = await runtime(request).billing.credits.grant(
        customer_id,
        body.amount,
        category=body.category,
        priority=body.priority,
        name=body.name,
        expires_at_us=body.expires_at_us,
        idempotency_key=body.idempotency_key,
    )
    return g.to_dict(remaining=g.amount)


@admin.get("/customers/{customer_id}/credits", summary="A customer's credit grants, in draw order")
async def credits(customer_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    grants = await rt.billing.credits.list(customer_id)
    data = [g.to_dict(remaining=(await rt.ledger.get_account(g.account_id)).available) for g in grants]
    return {"object": "list", "data": data}


@admin.get(
    "/customers/{customer_id}/invoice-preview", summary="Invoice preview of a customer's current period"
)
async def admin_preview(customer_id: str, request: Request) -> dict[str, Any]:
    return await preview(runtime(request).billing, customer_id)


@admin.post(
    "/customers/{customer_id}/usage",
    summary="Record usage events of a customer (idempotent by id)",
    openapi_extra=_EVENTS_BODY,
)
async def admin_ingest(customer_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    events = await _events(request)
    return {"object": "usage_ingest", **await U.ingest(rt.engine, rt.clock, customer_id, events)}


@admin.post("/usage/rollups/{day}", summary="Rebuild one UTC day's rollups and anomaly flags")
async def rollup(day: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    cfg = rt.settings.billing
    d = U.parse_day(day)
    n = await U.rollup_day(rt.engine, rt.clock, d, k=cfg.anomaly_factor, trailing=cfg.anomaly_days)
    return {"object": "usage_rollup_run", "day": d.isoformat(), "rows": n}


@admin.get("/usage/rollups", summary="Daily usage rollups (all customers)")
async def rollups(
    request: Request,
    start: str | None = Query(None, pattern=_DAY),
    end: str | None = Query(None, pattern=_DAY),
    customer_id: str | None = Query(None, pattern=_ID),
    anomalies: bool = Query(False, description="Only days flagged as anomalies"),
) -> dict[str, Any]:
    a, b = _range(start, end, _today(request))
    rows = await U.rollups(
        runtime(request).engine, start=a, end=b, customer_id=customer_id, anomalies_only=anomalies
    )
    return {"object": "list", "data": rows}
