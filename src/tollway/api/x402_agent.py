"""``/v1/x402/rules``: an agent prices the hosts its wallet owns, with its
``tw_agt_`` token (issue 22 §2).

A rule is the operator's :class:`~tollway.x402.rules.Rule` (the same JSON as
``[[x402.rules]]``) with what an agent may not choose fixed: ``host`` must be
one its wallet owns (a deployment's hostname, or a name within one of its
domains: checked at every create and update, as an A-label without port or
trailing dot, and again at the edge per request); ``payTo`` is the wallet's
own address (made on first use); the origin is the deployment serving the
host; the network and asset are ``[x402]``'s; ``unauthenticated_only``
(tollway's API keys) does not apply. Changing rules is a wallet-policy action
(category ``api_access``, action ``price_route``: ``Authorizer.permit``,
audited); reading them needs a live token. Another wallet's rule is not
found, exactly as a missing one. Every process picks changes up within 2 s
(``Paywall.watch``), this one at once.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tollway.api.auth import runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.wallets import _agent_token
from tollway.core.errors import forbidden, invalid
from tollway.provision.names import to_ascii
from tollway.runtime import Runtime
from tollway.wallets.store import Wallet
from tollway.x402 import wire
from tollway.x402.config import X402Config
from tollway.x402.owned import DEPLOYMENT_ORIGIN, OwnedRule, OwnedRuleStore
from tollway.x402.rules import Rule

router = APIRouter(route_class=JsonRoute, prefix="/v1/x402/rules", tags=["x402"])

CATEGORY = "api_access"


def _store(rt: Runtime) -> OwnedRuleStore:
    assert rt.paywall.owned is not None, "the runtime gives the paywall its agents' rules"
    return rt.paywall.owned


async def _body(request: Request) -> dict[str, Any]:
    """The rule as sent, read strictly (NaN, deep nesting, repeated keys: 400)."""
    try:
        body = wire.loads(await request.body())
    except wire.BadJSON as e:
        raise invalid(e.code, f"request body: {e.message}", e.param) from None
    if not isinstance(body, dict):
        raise invalid("invalid_rule", "send the rule as a JSON object", None)
    return body


def _host(given: object) -> str:
    if not isinstance(given, str) or not given.strip():
        raise invalid("invalid_host", "a rule names the host it prices (one the wallet owns)", "host")
    return to_ascii(given, "host")


def _same(given: object, ours: str) -> bool:
    return isinstance(given, str) and given.lower() == ours.lower()


async def _checked(rt: Runtime, wallet: Wallet, body: dict[str, Any]) -> Rule:
    """The agent's rule, with what it may not choose fixed, checked like
    ``[[x402.rules]]``; 403 ``host_not_owned`` for a host not the wallet's."""
    cfg = rt.settings.x402
    if "origin" in body:
        raise invalid(
            "origin_not_allowed", "an agent's rule forwards to the deployment serving its host", "origin"
        )
    if body.get("unauthenticated_only") or body.get("feature"):
        raise invalid(
            "invalid_rule",
            "unauthenticated_only and feature are for the operator's rules",
            "unauthenticated_only",
        )
    fixed = {
        "network": cfg.network,
        "asset": cfg.asset,
        "asset_name": cfg.asset_name,
        "asset_version": cfg.asset_version,
    }
    for field, ours in fixed.items():
        if body.get(field) not in (None, "") and not _same(body[field], ours):
            raise invalid("invalid_rule", f"{field} is [x402]'s own: {ours}", field)
    host = _host(body.get("host"))
    if not await rt.provision.deployments.owns(wallet.id, host):
        raise forbidden("host_not_owned", f"{host} is not a deployment or domain of this wallet")
    address = await rt.wallets.ensure_address(wallet.id)
    if body.get("pay_to") not in (None, "") and not _same(body["pay_to"], address):
        raise invalid(
            "pay_to_not_allowed", f"payments for this wallet's routes go to its address {address}", "pay_to"
        )
    rule = {**body, "host": host, "origin": DEPLOYMENT_ORIGIN, "pay_to": address}
    try:  # the same checks as tollway.toml's [[x402.rules]]
        return X402Config.model_validate({**cfg.model_dump(exclude={"rules"}), "rules": [rule]}).rules[0]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())[2:])
        msg = str(first.get("msg")).removeprefix("Value error, ")
        raise invalid("invalid_rule", f"{where}: {msg}" if where else msg, where or None) from None


async def _permit(request: Request, target: str) -> Wallet:
    return await runtime(request).authorizer.permit(_agent_token(request), CATEGORY, "price_route", target)


async def _live(request: Request) -> Wallet:
    _, wallet = await runtime(request).authorizer.live(_agent_token(request))
    return wallet


def _agent_view(o: OwnedRule) -> dict[str, Any]:
    """The fields an agent wrote (for PATCH: the rule to merge into)."""
    return o.rule.model_dump(exclude={"origin", "pay_to", "network", "asset", "asset_name", "asset_version"})


async def _changed(rt: Runtime) -> None:
    await rt.paywall.refresh()


@router.post("", status_code=201, summary="Price a route of a host the wallet owns")
async def create(request: Request) -> JSONResponse:
    rt = runtime(request)
    body = await _body(request)
    wallet = await _permit(request, str(body.get("host", "")))
    owned = await _store(rt).create(wallet.id, await _checked(rt, wallet, body))
    await _changed(rt)
    return JSONResponse(owned.to_dict(), status_code=201)


@router.get("", summary="The wallet's rules")
async def list_rules(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    wallet = await _live(request)
    return {"object": "list", "data": [o.to_dict() for o in await _store(rt).all(wallet.id)]}


@router.get("/{rule_id}", summary="One of the wallet's rules")
async def get_rule(rule_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    wallet = await _live(request)
    return (await _store(rt).get(rule_id, wallet.id)).to_dict()


async def _replace(request: Request, rule_id: str, merge: bool) -> dict[str, Any]:
    rt = runtime(request)
    body = await _body(request)
    store = _store(rt)
    wallet = await _permit(request, rule_id)
    old = await store.get(rule_id, wallet.id)
    given = {**_agent_view(old), **body} if merge else body
    owned = await store.replace(rule_id, wallet.id, await _checked(rt, wallet, given))
    await _changed(rt)
    return owned.to_dict()


@router.patch("/{rule_id}", summary="Change some of a rule's fields (the host is checked again)")
async def patch_rule(rule_id: str, request: Request) -> dict[str, Any]:
    return await _replace(request, rule_id, merge=True)


@router.put("/{rule_id}", summary="Replace a rule (the host is checked again)")
async def put_rule(rule_id: str, request: Request) -> dict[str, Any]:
    return await _replace(request, rule_id, merge=False)


@router.delete("/{rule_id}", summary="Delete a rule: the route is free again")
async def delete_rule(rule_id: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    wallet = await _permit(request, rule_id)
    owned = await _store(rt).delete(rule_id, wallet.id)
    await _changed(rt)
    return {**owned.to_dict(), "deleted": True}
