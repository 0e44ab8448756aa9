"""``/admin/x402/*``: settled payments, revenue, the paid-route rules (export
and import as JSON), and devnet funding."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, Field, ValidationError, model_validator

from tollway.api.auth import require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.core.errors import invalid
from tollway.x402 import payments as P
from tollway.x402 import wire
from tollway.x402.config import X402Config
from tollway.x402.exact_evm import is_address
from tollway.x402.rules import atomic

router = APIRouter(
    route_class=JsonRoute, prefix="/admin/x402", tags=["x402"], dependencies=[Depends(require_admin)]
)


@router.get("/payments", summary="Settled x402 payments, newest first")
async def list_payments(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    before: str | None = Query(None, pattern=r"^[A-Za-z0-9_]{1,64}$"),
) -> dict[str, Any]:
    rows = await P.payments(runtime(request).engine, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"object": "list", "data": rows, "has_more": more, "next_before": rows[-1]["id"] if more else None}


@router.get("/revenue", summary="Totals of settled x402 payments")
async def revenue(request: Request, since_us: int | None = Query(None, ge=0, le=2**63 - 1)) -> dict[str, Any]:
    return await P.revenue(runtime(request).engine, since_us)


def _rules_view(rt: Any) -> dict[str, Any]:
    return {"object": "list", "source": rt.paywall.source, "data": rt.paywall.rules.export()}


@router.get(
    "/rules",
    summary="The paid-route rules in force, as JSON (the same shape as [[x402.rules]])",
    description="`source` is `config` (tollway.toml) or `imported` (PUT /admin/x402/rules).",
)
async def export_rules(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    await rt.paywall.refresh()
    return _rules_view(rt)


class RuleSet(BaseModel):
    """``{"rules": [...]}``, or what GET /admin/x402/rules answers, as is (its ``data``)."""

    rules: list[dict[str, Any]] | None = Field(
        None,
        description="The whole rule set, in order (the first match wins); [] for none",
        examples=[
            [{"name": "weather", "path": "/weather", "origin": "http://127.0.0.1:9000", "price": "$0.001"}]
        ],
    )
    data: list[dict[str, Any]] | None = Field(None, description="The same, as GET answers it")
    object: str | None = Field(None, description="Ignored (GET's output)")
    source: str | None = Field(None, description="Ignored (GET's output)")

    @model_validator(mode="after")
    def _one_list(self) -> RuleSet:
        if (self.rules is None) == (self.data is None):
            raise ValueError("send the rule set as rules (or GET's data), one of them")
        return self

    def given(self) -> list[dict[str, Any]]:
        return self.rules if self.rules is not None else self.data or []


@router.put(
    "/rules",
    summary="Import a rule set: it replaces tollway.toml's rules in every process (within 2 s)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RuleSet.model_json_schema()}},
        }
    },
)
async def import_rules(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    cfg = rt.settings.x402
    try:  # read here, strictly: NaN, Infinity, deep nesting and repeated keys are 400s
        body = RuleSet.model_validate(wire.loads(await request.body()))
    except wire.BadJSON as e:
        raise invalid(e.code, f"request body: {e.message}", e.param) from None
    except ValidationError as e:
        first = e.errors()[0]
        raise invalid("invalid_rules", str(first.get("msg")), "rules") from None
    try:  # the same checks as tollway.toml's [[x402.rules]]
        rules = X402Config.model_validate({**cfg.model_dump(exclude={"rules"}), "rules": body.given()}).rules
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise invalid(
            "invalid_rules",
            f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
            where or "rules",
        ) from None
    if rt.paywall.store is not None:
        await rt.paywall.store.replace(rules)
    await rt.paywall.refresh()
    return _rules_view(rt)


@router.delete("/rules", summary="Drop imported rules: tollway.toml's rules apply again")
async def reset_rules(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    if rt.paywall.store is not None:
        await rt.paywall.store.replace([])
    await rt.paywall.refresh()
    return _rules_view(rt)


class Fund(BaseModel):
    address: str = Field(
        description="0x address to fund", examples=["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]
    )
    amount: str = Field(description='"$5" or atomic units as a string, e.g. "5000000"', examples=["$5"])


@router.post("/devnet/fund", summary="Mint devnet tokens to an address (devnet only)")
async def fund(request: Request, body: Fund = Body(...)) -> dict[str, Any]:
    rt = runtime(request)
    if not is_address(body.address):
        raise invalid("invalid_address", "address must be a 0x address of 40 hex digits", "address")
    try:
        amount = atomic(body.amount, rt.settings.x402.asset_decimals)
    except ValueError as e:
        raise invalid("invalid_amount", str(e), "amount") from None
    if amount <= 0:
        raise invalid("invalid_amount", "amount must be positive", "amount")
    t = await rt.devnet.fund(body.address, amount)
    return {
        "object": "devnet.funding",
        "address": body.address,
        "amount": amount,
        "balance": await rt.devnet.balance(body.address),
        "transfer_id": t.id,
    }
