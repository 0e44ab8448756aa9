"""``/admin/*``: customers, API keys and the ledger. Bearer admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request

from tollway.api.auth import require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import AccountIn, ApiKeyIn, CustomerIn, PostIn, TransferIn

router = APIRouter(
    route_class=JsonRoute, prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)]
)

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


def _list(items: list[Any]) -> dict[str, Any]:
    return {"object": "list", "data": [i.to_dict() for i in items]}


@router.post("/customers", status_code=201, summary="Create a customer and its prepaid account")
async def create_customer(body: CustomerIn, request: Request) -> dict[str, Any]:
    return (await runtime(request).customers.create(body.name, body.email)).to_dict()


@router.get("/customers", summary="List customers")
async def list_customers(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    after: str | None = Query(None, pattern=_ID),
) -> dict[str, Any]:
    return _list(await runtime(request).customers.list(limit=limit, after=after))


@router.get("/customers/{customer_id}", summary="Get a customer")
async def get_customer(customer_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).customers.get(customer_id)).to_dict()


@router.post("/keys", status_code=201, summary="Create an API key (the secret is shown once)")
async def create_key(body: ApiKeyIn, request: Request) -> dict[str, Any]:
    key, secret = await runtime(request).keys.create(body.customer_id, name=body.name, scopes=body.scopes)
    return {**key.to_dict(), "key": secret}


@router.get("/keys", summary="List API keys")
async def list_keys(request: Request, customer_id: str | None = Query(None, pattern=_ID)) -> dict[str, Any]:
    return _list(await runtime(request).keys.list(customer_id))


@router.post("/keys/{key_id}/revoke", summary="Revoke an API key")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).keys.revoke(key_id)).to_dict()


@router.post("/ledger/accounts", status_code=201, summary="Create a ledger account")
async def create_account(body: AccountIn, request: Request) -> dict[str, Any]:
    acct = await runtime(request).ledger.create_account(body.kind, name=body.name, id=body.id)
    return acct.to_dict()


@router.get("/ledger/accounts", summary="Balances of all (or the given) accounts")
async def balances(request: Request, id: list[str] | None = Query(None, max_length=1000)) -> dict[str, Any]:
    return _list(await runtime(request).ledger.accounts(id))


@router.get("/ledger/accounts/{account_id}", summary="One account's balance")
async def get_account(account_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).ledger.get_account(account_id)).to_dict()


@router.get("/ledger/accounts/{account_id}/transfers", summary="An account's transfers, newest first")
async def history(
    account_id: str,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before: str | None = Query(None, pattern=_ID),
) -> dict[str, Any]:
    return _list(await runtime(request).ledger.history(account_id, limit=limit, before=before))


@router.post(
    "/ledger/transfers",
    summary="Create a transfer (pending: true reserves it)",
    description="Send `Idempotency-Key` to make retries safe: the same key and body "
    "return the first result; the same key with another body is refused.",
)
async def create_transfer(
    body: TransferIn,
    request: Request,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> dict[str, Any]:
    t = await runtime(request).ledger.transfer(
        body.debit_account_id,
        body.credit_account_id,
        body.amount,
        pending=body.pending,
        timeout_s=body.timeout,
        description=body.description,
        idempotency_key=idempotency_key,
    )
    return t.to_dict()


@router.get("/ledger/transfers/{transfer_id}", summary="Get a transfer")
async def get_transfer(transfer_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).ledger.get_transfer(transfer_id)).to_dict()


@router.post("/ledger/transfers/{transfer_id}/post", summary="Post a pending transfer")
async def post_transfer(
    transfer_id: str,
    request: Request,
    body: PostIn | None = None,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> dict[str, Any]:
    amount = body.amount if body is not None else None
    t = await runtime(request).ledger.post(transfer_id, amount, idempotency_key=idempotency_key)
    return t.to_dict()


@router.post("/ledger/transfers/{transfer_id}/void", summary="Void a pending transfer")
async def void_transfer(
    transfer_id: str,
    request: Request,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> dict[str, Any]:
    t = await runtime(request).ledger.void(transfer_id, idempotency_key=idempotency_key)
    return t.to_dict()
