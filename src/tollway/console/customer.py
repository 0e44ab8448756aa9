"""A customer's own pages (and the operator's view of one customer): usage and
cost, balance, plan and invoice preview, API keys (prefixes only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tollway.billing.preview import preview
from tollway.console import queries
from tollway.console.guard import console, hidden, viewer
from tollway.console.overview import RANGES, overview
from tollway.console.render import NO_STORE, page
from tollway.console.sessions import Viewer
from tollway.core.lazyroute import LazyRoute
from tollway.runtime import Runtime

router = APIRouter(route_class=LazyRoute, prefix="/console", include_in_schema=False)
_RANGE = "^(" + "|".join(RANGES) + ")$"


async def account_view(rt: Runtime, customer_id: str, range_: str = "30d") -> dict[str, Any]:
    found = await queries.customers(rt.engine, rt.clock.now_us(), customer_id)
    if not found:
        raise hidden()
    return {
        "customer": found[0],
        "invoice": await preview(rt.billing, customer_id),
        "keys": await queries.keys(rt.engine, customer_id),
        "data": await overview(rt.engine, rt.clock.now_us(), range_, customer_id),
        "data_url": f"/console/customers/{customer_id}/usage.json",
        "ranges": list(RANGES),
    }


def _customer(v: Viewer) -> str:
    if v.customer_id is None:  # the operator has no account of their own
        raise hidden()
    return v.customer_id


@router.get("/me", response_class=HTMLResponse)
async def me(
    request: Request, range: str = Query("30d", pattern=_RANGE), v: Viewer = Depends(viewer)
) -> Response:
    ctx = await account_view(console(request).rt, _customer(v), range)
    ctx["data_url"] = "/console/me/usage.json"
    return page(request, "account.html", v, "me", **ctx)


@router.get("/me/usage.json")
async def my_usage(
    request: Request, range: str = Query("30d", pattern=_RANGE), v: Viewer = Depends(viewer)
) -> Response:
    rt = console(request).rt
    return JSONResponse(await overview(rt.engine, rt.clock.now_us(), range, _customer(v)), headers=NO_STORE)


@router.get("/customers/{customer_id}/usage.json")
async def customer_usage(
    customer_id: str, request: Request, range: str = Query("30d", pattern=_RANGE), v: Viewer = Depends(viewer)
) -> Response:
    if not v.operator:
        raise hidden()
    rt = console(request).rt
    return JSONResponse(await overview(rt.engine, rt.clock.now_us(), range, customer_id), headers=NO_STORE)
