"""Agent wallets over HTTP: ``/admin/wallets``, ``/admin/approvals`` for
humans; ``/v1/wallet/*`` for agents, with their ``tw_agt_`` token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from tollway.api.auth import bearer, require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import Strict
from tollway.core.errors import invalid, unauthenticated
from tollway.wallets.store import AgentToken, Wallet
from tollway.x402.earnings import earnings, month_start_us

admin = APIRouter(
    route_class=JsonRoute, prefix="/admin", tags=["wallets"], dependencies=[Depends(require_admin)]
)
agent = APIRouter(route_class=JsonRoute, prefix="/v1/wallet", tags=["wallets"])
broker = APIRouter(route_class=JsonRoute, prefix="/v1/broker", tags=["wallets"])

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class WalletIn(Strict):
    customer_id: str | None = Field(None, max_length=64)
    owner: str | None = Field(None, max_length=200, description="A human principal, when not a customer")
    policy: dict[str, Any] = Field(default_factory=dict)
    with_key: bool = Field(False, description="Give the wallet an EVM signing key (encrypted at rest)")


class PolicyIn(Strict):
    policy: dict[str, Any]


class TopupIn(Strict):
    amount: int | str = Field(description='Micro-USD, or dollars like "$5".')
    source: str | None = Field(
        None, max_length=64, description="Ledger account to fund from (default: the owner's prepaid)"
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)


class GrantIn(Strict):
    name: str = Field("", max_length=200)
    limits: dict[str, Any] = Field(default_factory=dict)


class DecideIn(Strict):
    actor: str = Field("admin", min_length=1, max_length=200)


class AuthorizeIn(Strict):
    amount: Any = Field(description="Micro-USD, a positive integer.")
    payee: Any = Field(description="A host or an x402 payTo address.")
    category: Any = Field(description="ai_inference, api_access, domains, dns, hosting, …")
    idempotency_key: Any
    currency: Any = "usd"
    memo: str = Field("", max_length=500)
    hold_seconds: int | None = Field(None, ge=1, le=7 * 86_400)


class CaptureIn(Strict):
    amount: Any = None


async def _wallet_dict(request: Request, w: Wallet) -> dict[str, Any]:
    bal, avail = await runtime(request).wallets.balance(w)
    return w.to_dict(bal, avail)


def _agent_token(request: Request) -> str:
    token = bearer(request)
    if token is None:
        raise unauthenticated("missing_agent_token", "send Authorization: Bearer <agent token>")
    return token


async def _agent(request: Request) -> AgentToken:
    token, _ = await runtime(request).wallets.verify(_agent_token(request))
    return token


# -------------------------------------------------------------------- humans


@admin.post("/wallets", status_code=201, summary="Create a wallet")
async def create_wallet(body: WalletIn, request: Request) -> dict[str, Any]:
    w = await runtime(request).wallets.create(
        customer_id=body.customer_id, owner=body.owner, policy=body.policy, with_key=body.with_key
    )
    return await _wallet_dict(request, w)


@admin.get("/wallets", summary="List wallets")
async def list_wallets(
    request: Request, customer_id: str | None = Query(None, pattern=_ID)
) -> dict[str, Any]:
    ws = await runtime(request).wallets.all(customer_id)
    return {"object": "list", "data": [await _wallet_dict(request, w) for w in ws]}


@admin.get("/wallets/{wallet_id}", summary="A wallet and its balance")
async def get_wallet(wallet_id: str, request: Request) -> dict[str, Any]:
    return await _wallet_dict(request, await runtime(request).wallets.get(wallet_id))


@admin.put("/wallets/{wallet_id}/policy", summary="Replace a wallet's spend policy")
async def set_policy(wallet_id: str, body: PolicyIn, request: Request) -> dict[str, Any]:
    return await _wallet_dict(request, await runtime(request).wallets.set_policy(wallet_id, body.policy))


@admin.post("/wallets/{wallet_id}/topup", summary="Fund a wallet from the ledger")
async def topup(wallet_id: str, body: TopupIn, request: Request) -> dict[str, Any]:
    return await runtime(request).wallets.topup(
        wallet_id, body.amount, source=body.source, idempotency_key=body.idempotency_key
    )


@admin.post("/wallets/{wallet_id}/tokens", status_code=201, summary="Grant an agent token (shown once)")
async def grant(wallet_id: str, body: GrantIn, request: Request) -> dict[str, Any]:
    t, secret = await runtime(request).wallets.grant(wallet_id, name=body.name, limits=body.limits)
    return {**t.to_dict(), "token": secret}


@admin.get("/wallets/{wallet_id}/tokens", summary="A wallet's agent tokens")
async def tokens(wallet_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    await rt.wallets.get(wallet_id)
    return {"object": "list", "data": [t.to_dict() for t in await rt.wallets.tokens(wallet_id)]}


@admin.post("/agent-tokens/{token_id}/revoke", summary="Revoke an agent token; its open holds are voided")
async def revoke(token_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).authorizer.revoke(token_id)).to_dict()


@admin.post("/agent-tokens/{token_id}/unfreeze", summary="Unfreeze a token the runaway-loop guard froze")
async def unfreeze(token_id: str, body: DecideIn, request: Request) -> dict[str, Any]:
    return (await runtime(request).wallets.unfreeze(token_id, actor=body.actor)).to_dict()


@admin.get("/approvals", summary="Payments waiting for a human")
async def approvals(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [d.to_dict() for d in await runtime(request).authorizer.pending()]}


@admin.post("/approvals/{authorization_id}/approve", summary="Approve a waiting payment (it is then held)")
async def approve(authorization_id: str, body: DecideIn, request: Request) -> dict[str, Any]:
    return (await runtime(request).authorizer.approve(authorization_id, body.actor)).to_dict()


@admin.post("/approvals/{authorization_id}/deny", summary="Deny a waiting payment")
async def deny(authorization_id: str, body: DecideIn, request: Request) -> dict[str, Any]:
    return (await runtime(request).authorizer.deny(authorization_id, body.actor)).to_dict()


@admin.get("/wallets/{wallet_id}/audit", summary="A wallet's audit trail, newest first")
async def audit(
    wallet_id: str,
    request: Request,
    token_id: str | None = Query(None, pattern=_ID),
    authorization_id: str | None = Query(None, pattern=_ID),
    limit: int = Query(100, ge=1, le=1000),
    before: str | None = Query(None, pattern=_ID),
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.wallets.get(wallet_id)
    rows = await rt.wallets.audit.query(
        wallet_id=wallet_id, token_id=token_id, authorization_id=authorization_id, limit=limit, before=before
    )
    return {"object": "list", "data": rows}


# -------------------------------------------------------------------- agents


@agent.get("", summary="The agent's wallet: its address, balance, x402 earnings and this token's limits")
async def my_wallet(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    token, w = await rt.wallets.verify(_agent_token(request))
    bal, avail = await rt.wallets.balance(w)
    month = month_start_us(rt.clock.now_us())
    return {
        "object": "agent_wallet",
        "wallet_id": w.id,
        "evm_address": w.evm_address,
        "balance": bal,
        "available": avail,
        "currency": w.policy.currency,
        # Payments for its routes, credited gross, less the operator's fee (micro-USD).
        "earnings": {
            "all_time": await earnings(rt.engine, w.account_id),
            "this_month": await earnings(rt.engine, w.account_id, month),
            "month_start_us": month,
        },
        "token": token.to_dict(),
    }


@agent.post(
    "/authorize",
    summary="Ask to spend: approved (held), pending a human (202), or declined (402 with a reason code)",
)
async def authorize(body: AuthorizeIn, request: Request) -> Any:
    d = await runtime(request).authorizer.authorize(
        _agent_token(request),
        amount=body.amount,
        payee=body.payee,
        category=body.category,
        idempotency_key=body.idempotency_key,
        currency=body.currency,
        memo=body.memo,
        hold_seconds=body.hold_seconds,
    )
    if d.status == "declined":
        return JSONResponse({**d.refusal().to_dict(), "authorization": d.to_dict()}, status_code=402)
    return JSONResponse(d.to_dict(), status_code=202 if d.status == "pending_approval" else 200)


@agent.get("/authorizations/{authorization_id}", summary="One of this token's authorizations")
async def get_authorization(authorization_id: str, request: Request) -> dict[str, Any]:
    token = await _agent(request)
    return (await runtime(request).authorizer.get(authorization_id, token.id)).to_dict()


@agent.post("/authorizations/{authorization_id}/capture", summary="Take the amount spent (default: all held)")
async def capture(authorization_id: str, body: CaptureIn, request: Request) -> dict[str, Any]:
    token = await _agent(request)
    return (
        await runtime(request).authorizer.capture(authorization_id, body.amount, token_id=token.id)
    ).to_dict()


@agent.post("/authorizations/{authorization_id}/void", summary="Release the hold")
async def void(authorization_id: str, request: Request) -> dict[str, Any]:
    token = await _agent(request)
    return (await runtime(request).authorizer.void(authorization_id, token_id=token.id)).to_dict()


class FetchIn(Strict):
    method: str = Field("GET", max_length=10)
    url: str = Field(max_length=4096)
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent to the URL (never the agent token)"
    )
    body: str | None = Field(None, description="A text body")
    body_base64: str | None = Field(None, description="A binary body, base64")
    json_body: Any = Field(None, alias="json", description="A JSON body (sets content-type)")
    category: str = Field("api_access", max_length=32)
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    max_amount: int | None = Field(None, description="The most to pay, in micro-USD")


@broker.post(
    "/fetch",
    summary="Fetch a URL for the agent, paying an x402 402 from its wallet within policy",
)
async def fetch(body: FetchIn, request: Request) -> Any:
    import base64
    import binascii

    import orjson

    data: bytes | None = None
    headers = dict(body.headers)
    given = [x is not None for x in (body.body, body.body_base64, body.json_body)]
    if sum(given) > 1:
        raise invalid("invalid_body", "send at most one of body, body_base64 and json", "body")
    if body.body is not None:
        data = body.body.encode()
    elif body.body_base64 is not None:
        try:
            data = base64.b64decode(body.body_base64, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("invalid_body", "body_base64 is not base64", "body_base64") from None
    elif body.json_body is not None:
        data = orjson.dumps(body.json_body)
        headers.setdefault("content-type", "application/json")
    out = await runtime(request).broker.fetch(
        _agent_token(request),
        method=body.method,
        url=body.url,
        headers=headers,
        body=data,
        category=body.category,
        idempotency_key=body.idempotency_key,
        max_amount=body.max_amount,
    )
    return JSONResponse(out, status_code=202 if out["status"] == 202 and out.get("authorization") else 200)
