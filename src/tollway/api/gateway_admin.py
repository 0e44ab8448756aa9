"""``/admin/requests`` (the request log) and the limits of keys and customers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse

from tollway.api.auth import require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.gateway import limits as L
from tollway.gateway import requestexport
from tollway.runtime import Runtime

router = APIRouter(
    route_class=JsonRoute, prefix="/admin", tags=["gateway"], dependencies=[Depends(require_admin)]
)

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
_MAX_US = 2**63 - 1  # a time in µs that fits a 64-bit column
_LIMITS_EXAMPLE = {"rpm": 60, "tpm": 100000, "daily_budget": "$5", "monthly_budget": None}


class RequestFilters:
    """The request log's filters, shared by the listing and the export."""

    def __init__(
        self,
        customer_id: str | None = Query(None, pattern=_ID),
        key_id: str | None = Query(None, pattern=_ID),
        model: str | None = Query(None, max_length=100),
        status: int | None = Query(None, ge=100, le=599),
        cache: str | None = Query(None, pattern="^(HIT|MISS)$"),
        end_user: str | None = Query(None, max_length=256, description="the request's `user`"),
        tag: list[str] | None = Query(
            None, description="key=value: the request's `metadata[key]` is value (repeat: all must match)"
        ),
        trace_id: str | None = Query(None, pattern="^[0-9a-f]{32}$"),
        since_us: int | None = Query(None, ge=0, le=_MAX_US),
        until_us: int | None = Query(None, ge=0, le=_MAX_US),
    ) -> None:
        self.filters: dict[str, Any] = {
            "customer_id": customer_id,
            "key_id": key_id,
            "model": model,
            "status": status,
            "cache": cache,
            "end_user": end_user,
            "trace_id": trace_id,
            "since_us": since_us,
            "until_us": until_us,
            "tags": requestexport.parse_tags(tag),
        }


@router.get("/requests", summary="The request log, newest first (filters and cursor pagination)")
async def requests(
    request: Request,
    f: RequestFilters = Depends(),
    limit: int = Query(50, ge=1, le=1000),
    before: str | None = Query(None, pattern=_ID, description="the last id of the previous page"),
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.gateway.log.flush()  # what was served is visible at once
    rows = await rt.gateway.log.query(limit=limit + 1, before=before, **f.filters)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"object": "list", "data": rows, "has_more": more, "next_before": rows[-1]["id"] if more else None}


@router.get(
    "/requests/export",
    summary="The request log as JSONL or CSV, streamed, newest first (the same filters)",
    response_class=StreamingResponse,
)
async def export_requests(
    request: Request,
    f: RequestFilters = Depends(),
    format: str = Query("jsonl", pattern="^(jsonl|csv)$"),
    limit: int | None = Query(None, ge=1, description="at most this many rows (default: all)"),
) -> StreamingResponse:
    rt = runtime(request)
    return StreamingResponse(
        requestexport.export(rt.gateway.log, format, limit, **f.filters),
        media_type=requestexport.MEDIA_TYPES[format],
        headers={"content-disposition": f'attachment; filename="requests.{format}"'},
    )


async def _limits_view(rt: Runtime, scope: str, owner: str, stored: dict[str, Any]) -> dict[str, Any]:
    base = rt.gateway.key_defaults if scope == "key" else rt.gateway.customer_defaults
    eff = L.effective(base, json.dumps(stored) if stored else None)
    return {
        "object": "limits",
        "scope": scope,
        "id": owner,
        "overrides": stored,
        "effective": eff.to_dict(),
        "budgets": await rt.gateway.budgets.status(scope, owner, eff),
    }


@router.get("/keys/{key_id}/limits", summary="A key's rate limits and budgets (and what is left)")
async def key_limits(key_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    return await _limits_view(rt, "key", key_id, await rt.keys.get_limits(key_id))


@router.patch("/keys/{key_id}/limits", summary="Set a key's limits (null restores the default)")
async def set_key_limits(
    key_id: str, request: Request, body: dict[str, Any] = Body(..., examples=[_LIMITS_EXAMPLE])
) -> dict[str, Any]:
    rt = runtime(request)
    changes = L.validate(body, set(rt.inference.configs))
    return await _limits_view(rt, "key", key_id, await rt.keys.set_limits(key_id, changes))


@router.get("/customers/{customer_id}/limits", summary="A customer's rate limits and budgets")
async def customer_limits(customer_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    return await _limits_view(rt, "customer", customer_id, await rt.customers.get_limits(customer_id))


@router.patch(
    "/customers/{customer_id}/limits", summary="Set a customer's limits (null restores the default)"
)
async def set_customer_limits(
    customer_id: str, request: Request, body: dict[str, Any] = Body(..., examples=[_LIMITS_EXAMPLE])
) -> dict[str, Any]:
    rt = runtime(request)
    changes = L.validate(body, set(rt.inference.configs))
    return await _limits_view(
        rt, "customer", customer_id, await rt.customers.set_limits(customer_id, changes)
    )
