"""What a wallet's owner and its agents say to each other over HTTP: budget
requests (with bootstrap credentials), profit and loss, and the autopilot.

- agents: ``POST /v1/wallet/budget-requests``, ``GET /v1/wallet/budget-requests/{id}``
  (a ``tw_boot_`` bootstrap credential or a ``tw_agt_`` token), ``GET /v1/wallet/pnl``;
- owners: ``/admin/wallets/{id}/bootstrap``, ``/admin/wallets/budget-requests``,
  ``/admin/wallets/{id}/pnl``, ``/admin/wallets/{id}/autopilot``.

Its admin router is included before ``api/wallets.py``'s, so
``/admin/wallets/budget-requests`` is not read as a wallet id.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from tollway.api.auth import bearer, require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import Strict
from tollway.core.errors import unauthenticated
from tollway.runtime import Runtime
from tollway.wallets.pnl import pnl
from tollway.wallets.store import Wallet

admin = APIRouter(
    route_class=JsonRoute, prefix="/admin", tags=["wallets"], dependencies=[Depends(require_admin)]
)
agent = APIRouter(route_class=JsonRoute, prefix="/v1/wallet", tags=["wallets"])

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class BootstrapIn(Strict):
    name: str = Field("", max_length=200)
    expires_in_seconds: int | None = Field(None, description="Default: [wallets] bootstrap_seconds")


class BudgetRequestIn(Strict):
    amount: Any = Field(description='Micro-USD per period, or dollars like "$5".')
    period: Any = Field("monthly", description="daily, weekly, monthly, yearly or all_time")
    categories: Any = None
    payees: Any = None
    max_per_payment: Any = None
    expires_at_us: Any = None
    purpose: Any = Field(description="What the budget is for (shown to the owner).")
    raise_of: Any = Field(None, description="An agent token of this wallet whose caps this raises.")


class ApproveIn(Strict):
    caps: dict[str, Any] | None = Field(None, description="The caps granted (default: those asked)")
    actor: str = Field("admin", min_length=1, max_length=200)


class DenyIn(Strict):
    reason: Any
    actor: str = Field("admin", min_length=1, max_length=200)


class AutopilotIn(Strict):
    enabled: Any = True
    teardown_unprofitable: Any = None
    spend_floor: Any = None


def _credential(request: Request) -> str:
    presented = bearer(request)
    if presented is None:
        raise unauthenticated(
            "missing_credential", "send Authorization: Bearer <bootstrap credential or agent token>"
        )
    return presented


async def pnl_dict(rt: Runtime, w: Wallet, from_: str | None, to: str | None) -> dict[str, Any]:
    return await pnl(
        rt.engine, w.id, w.account_id, rt.settings.provision.apps_domain, rt.clock.now_us(), from_, to
    )


# -------------------------------------------------------------------- agents


@agent.post("/budget-requests", status_code=201, summary="Ask the owner for a budget (or a raise)")
async def request_budget(body: BudgetRequestIn, request: Request) -> dict[str, Any]:
    caps = body.model_dump(exclude={"purpose", "raise_of"}, exclude_none=True)
    return await runtime(request).budget_requests.create(
        _credential(request), caps=caps, purpose=body.purpose, raise_of=body.raise_of
    )


@agent.get(
    "/budget-requests/{request_id}",
    summary="A budget request's status: the first read after approval carries the token, once",
)
async def poll_budget(request_id: str, request: Request) -> dict[str, Any]:
    return await runtime(request).budget_requests.poll(_credential(request), request_id)


@agent.get("/pnl", summary="The agent's wallet's profit and loss over a period (default: this month)")
async def my_pnl(
    request: Request,
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    rt = runtime(request)
    presented = bearer(request)
    if presented is None:
        raise unauthenticated("missing_agent_token", "send Authorization: Bearer <agent token>")
    _, w = await rt.authorizer.live(presented)
    return await pnl_dict(rt, w, from_, to)


# -------------------------------------------------------------------- owners


@admin.post("/wallets/{wallet_id}/bootstrap", status_code=201, summary="A bootstrap credential (shown once)")
async def bootstrap(wallet_id: str, body: BootstrapIn, request: Request) -> dict[str, Any]:
    b, secret = await runtime(request).bootstraps.create(
        wallet_id, name=body.name, expires_in_seconds=body.expires_in_seconds
    )
    return {**b.to_dict(), "credential": secret}


@admin.get("/wallets/{wallet_id}/bootstraps", summary="A wallet's bootstrap credentials")
async def bootstraps(wallet_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    await rt.wallets.get(wallet_id)
    return {"object": "list", "data": [b.to_dict() for b in await rt.bootstraps.all(wallet_id)]}


@admin.post("/wallet-bootstraps/{bootstrap_id}/revoke", summary="Revoke a bootstrap credential")
async def revoke_bootstrap(bootstrap_id: str, request: Request) -> dict[str, Any]:
    return (await runtime(request).bootstraps.revoke(bootstrap_id)).to_dict()


@admin.get("/wallets/budget-requests", summary="Agents' budget requests (pending ones first to decide)")
async def budget_requests(
    request: Request,
    status: str | None = Query(None, max_length=16),
    wallet_id: str | None = Query(None, pattern=_ID),
) -> dict[str, Any]:
    return {"object": "list", "data": await runtime(request).budget_requests.list(status, wallet_id)}


@admin.get("/wallets/budget-requests/{request_id}", summary="One budget request")
async def budget_request(request_id: str, request: Request) -> dict[str, Any]:
    return await runtime(request).budget_requests.get(request_id)


@admin.post("/wallets/budget-requests/{request_id}/approve", summary="Approve (optionally with other caps)")
async def approve_budget(request_id: str, body: ApproveIn, request: Request) -> dict[str, Any]:
    return await runtime(request).budget_requests.approve(request_id, body.caps, body.actor)


@admin.post("/wallets/budget-requests/{request_id}/deny", summary="Deny, with a reason")
async def deny_budget(request_id: str, body: DenyIn, request: Request) -> dict[str, Any]:
    return await runtime(request).budget_requests.deny(request_id, body.reason, body.actor)


@admin.get("/wallets/{wallet_id}/pnl", summary="A wallet's profit and loss over a period")
async def wallet_pnl_route(
    wallet_id: str,
    request: Request,
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
) -> dict[str, Any]:
    rt = runtime(request)
    return await pnl_dict(rt, await rt.wallets.get(wallet_id), from_, to)


@admin.get("/wallets/{wallet_id}/autopilot", summary="A wallet's autopilot settings")
async def get_autopilot(wallet_id: str, request: Request) -> dict[str, Any]:
    return await runtime(request).authorizer.autopilot.get(wallet_id)


@admin.put("/wallets/{wallet_id}/autopilot", summary="Set a wallet's autopilot (opt-in)")
async def put_autopilot(wallet_id: str, body: AutopilotIn, request: Request) -> dict[str, Any]:
    return await runtime(request).authorizer.autopilot.put(wallet_id, body.model_dump())


@admin.post("/autopilot/check", summary="Run the autopilot's check now: the decisions it made")
async def check_autopilot(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await runtime(request).authorizer.autopilot.check()}
