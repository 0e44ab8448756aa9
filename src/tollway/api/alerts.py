"""``/admin/alerts``: the alerts raised (tollway.observe.alerts); acknowledging them. Admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from tollway.api.agents import _obj
from tollway.api.auth import require_admin, runtime
from tollway.api.jsonroute import JsonRoute

router = APIRouter(
    route_class=JsonRoute, prefix="/admin/alerts", tags=["alerts"], dependencies=[Depends(require_admin)]
)


@router.get("", summary="Alerts, newest first, with their deliveries")
async def alert_list(
    request: Request,
    kind: str | None = Query(None, max_length=32),
    status: str | None = Query(None, pattern="^(open|acked)$"),
    subject: str | None = Query(None, max_length=200),
    since_us: int | None = Query(None, ge=0, le=2**62),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    found = await runtime(request).alerts.list(
        kind=kind, status=status, subject=subject, since_us=since_us, limit=limit
    )
    return {"object": "list", "data": [a.to_dict() for a in found]}


@router.post("/{alert_id}/ack", summary="Acknowledge an alert")
async def alert_ack(alert_id: str, request: Request) -> dict[str, Any]:
    b = await _obj(request, {"by"})
    return (await runtime(request).alerts.ack(alert_id, b.get("by", "admin"))).to_dict()
