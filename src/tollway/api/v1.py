"""``/v1/*`` for customers, authenticated by API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.identity.keys import ApiKey

router = APIRouter(route_class=JsonRoute, prefix="/v1", tags=["customer"])


@router.get("/balance", summary="The calling customer's prepaid balance")
async def balance(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "balance:read")
    rt = runtime(request)
    account = await rt.ledger.get_account(key.account_id)
    return {
        "object": "balance",
        "customer_id": key.customer_id,
        "account_id": account.id,
        "balance": account.balance,
        "available": account.available,
        "reserved": account.debits_pending,
        "currency": "usd",
        "unit": "micro",
    }
