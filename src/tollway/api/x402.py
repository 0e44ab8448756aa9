"""The built-in x402 facilitator over HTTP, in the official facilitator API's
shape: ``POST /x402/verify``, ``POST /x402/settle``, ``GET /x402/supported``.

Point the official SDK's ``HTTPFacilitatorClient`` at ``http://<tollway>/x402``.
A payment that fails a check is answered with HTTP 200 and ``isValid: false``
or ``success: false`` plus the spec's reason code; only a request that is not
JSON at all gets a 400 in tollway's error shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tollway.api.auth import runtime
from tollway.api.jsonroute import JsonRoute
from tollway.core.errors import ErrorType, TollwayError
from tollway.x402 import wire

router = APIRouter(route_class=JsonRoute, prefix="/x402", tags=["x402"])


class FacilitatorRequest(BaseModel):
    """The body of ``/verify`` and ``/settle`` (checked field by field, so that a
    bad payment gets its reason code rather than a validation error)."""

    model_config = ConfigDict(extra="allow")

    x402Version: int | None = Field(None, description="1 or 2; the payload's own version counts")
    paymentPayload: dict[str, Any] = Field(description="The decoded X-PAYMENT / PAYMENT-SIGNATURE object")
    paymentRequirements: dict[str, Any] = Field(description="The requirements the resource server asked for")


class VerifyResponse(BaseModel):
    isValid: bool
    invalidReason: str | None = None
    invalidMessage: str | None = None
    payer: str | None = None


class SettleResponse(BaseModel):
    success: bool
    errorReason: str | None = None
    errorMessage: str | None = None
    payer: str | None = None
    transaction: str
    network: str
    amount: str | None = None


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = wire.loads(await request.body())
    except wire.BadJSON as e:  # also NaN, Infinity, 1e309, 100,000 levels deep, a key twice
        raise TollwayError(ErrorType.INVALID_REQUEST, e.code, f"request body: {e.message}", e.param) from None
    if not isinstance(body, dict):
        raise TollwayError(ErrorType.INVALID_REQUEST, "invalid_json", "request body must be a JSON object")
    return body


@router.post(
    "/verify",
    summary="Verify an x402 payment (no money moves)",
    response_model=VerifyResponse,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": FacilitatorRequest.model_json_schema()}}}
    },
)
async def verify(request: Request) -> dict[str, Any]:
    body = await _body(request)
    return await runtime(request).facilitator.verify(
        body.get("paymentPayload"), body.get("paymentRequirements")
    )


@router.post(
    "/settle",
    summary="Settle an x402 payment: checks again, then moves the money once",
    response_model=SettleResponse,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": FacilitatorRequest.model_json_schema()}}}
    },
)
async def settle(request: Request) -> dict[str, Any]:
    body = await _body(request)
    return await runtime(request).facilitator.settle(
        body.get("paymentPayload"), body.get("paymentRequirements")
    )


@router.get("/supported", summary="The (version, scheme, network) kinds this facilitator settles")
async def supported(request: Request) -> dict[str, Any]:
    return runtime(request).facilitator.supported()


@router.get("/discovery/resources", summary="The paid routes, in the x402 bazaar's discovery format")
async def discovery(
    request: Request,
    type: str | None = Query(None, description="Only this resource type (http)"),
    payTo: str | None = Query(None, description="Only routes paying this address"),
    scheme: str | None = Query(None),
    network: str | None = Query(None),
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    rt = runtime(request)
    if type not in (None, "http"):
        return {"x402Version": 2, "items": [], "pagination": {"limit": limit, "offset": offset, "total": 0}}
    base = str(request.base_url).rstrip("/")
    return rt.paywall.discovery(base, offset=offset, limit=limit, payTo=payTo, scheme=scheme, network=network)
