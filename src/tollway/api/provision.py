"""Provisioning over HTTP: ``/v1/broker/provision/*`` for agents (their
``tw_agt_`` token; purchases paid from the wallet within its policy), and
``/admin/provision/*`` for operators (overrides, the reaper, listings).

A revoked, expired or frozen token can do nothing here (403). A change or a
deletion that moves no money (delete a domain, a record or a deployment,
roll back) is authorized like a purchase: the token must be live and its
category allowed (``Authorizer.permit``, audited as event ``change``), and
the object must be its wallet's."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field

from tollway.api.auth import require_admin, runtime
from tollway.api.errors import ErrorBody
from tollway.api.jsonroute import JsonRoute
from tollway.api.models import Strict
from tollway.api.wallets import _agent_token
from tollway.provision import bundles
from tollway.provision.purchase import Pending

agent = APIRouter(route_class=JsonRoute, prefix="/v1/broker/provision", tags=["provision"])
# The zone files are text; their errors are JSON like every other error.
_ZONE: dict[str, Any] = {
    "response_class": PlainTextResponse,
    "responses": {
        200: {"content": {"text/plain": {}}},
        **{s: {"model": ErrorBody, "content": {"application/json": {}}} for s in (400, 401, 404)},
    },
}


async def _zone_file(request: Request, zone: str) -> PlainTextResponse:
    text = await runtime(request).provision.domains.zone_file(zone)
    return PlainTextResponse(text, media_type="text/plain")


admin = APIRouter(
    route_class=JsonRoute,
    prefix="/admin/provision",
    tags=["provision"],
    dependencies=[Depends(require_admin)],
)


class DomainIn(Strict):
    domain: Any = Field(description="The name to register (label.tld; Unicode or xn-- labels)")
    years: Any = Field(1, description="1 to 10")
    idempotency_key: Any = Field(None, description="Retries with the same key buy once")


class RenewIn(Strict):
    years: Any = 1
    idempotency_key: Any = None


class RecordIn(Strict):
    type: Any = Field(description="A, AAAA, CNAME, TXT or MX")
    name: Any = Field("@", description="A full name in the zone, or one relative to it ('@': the apex)")
    content: Any
    ttl: Any = Field(1, description="1 (automatic) or 60..86400")
    priority: Any = Field(None, description="MX only, 0..65535")
    idempotency_key: Any = None


class DeployIn(Strict):
    name: Any = Field(description="The deployment's name: one DNS label (it answers at <name>.<apps_domain>)")
    kind: Any = Field("asgi", description="asgi, wsgi or static")
    entrypoint: Any = Field(None, description="module:attribute for an app; a directory for a static site")
    bundle: Any = Field(description="A zip or tar(.gz) archive, base64")
    env: Any = Field(None, description="Environment variables for the app, {NAME: value} (all it gets)")
    idempotency_key: Any = None


class RollbackIn(Strict):
    version: int | None = Field(None, ge=1)


class HostnameIn(Strict):
    hostname: Any
    idempotency_key: Any = None


class OverrideIn(Strict):
    domain: Any
    wallet_id: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500)
    actor: str = Field("admin", min_length=1, max_length=200)


class ReapIn(Strict):
    apply: bool = Field(False, description="Tear down what is flagged (default: only report)")


async def _answer(work: Awaitable[dict[str, Any]], status: int = 200) -> JSONResponse:
    """The result; 202 with the authorization when a human must approve the purchase first."""
    try:
        out = await work
    except Pending as p:
        return JSONResponse(p.to_dict(), status_code=202)
    return JSONResponse(out, status_code=status)


async def _wallet_id(request: Request) -> str:
    """The wallet of a live token (a read)."""
    _, wallet = await runtime(request).authorizer.live(_agent_token(request))
    return wallet.id


async def _permit(request: Request, category: str, action: str, target: str) -> str:
    """The wallet of a token allowed to make this change (audited either way)."""
    wallet = await runtime(request).authorizer.permit(_agent_token(request), category, action, target)
    return wallet.id


# ------------------------------------------------------------------ domains


@agent.get("/domains", summary="The agent's wallet's domains")
async def domains(request: Request) -> dict[str, Any]:
    doms = await runtime(request).provision.domains.all(await _wallet_id(request))
    return {"object": "list", "data": [d.to_dict() for d in doms]}


@agent.get("/domains/check", summary="Availability, price and the trademark guard's verdict")
async def check(request: Request, domain: str = Query(max_length=300)) -> dict[str, Any]:
    await _wallet_id(request)
    return await runtime(request).provision.domains.check(_agent_token(request), domain)


@agent.post("/domains", status_code=201, summary="Register a domain (category domains)")
async def register(body: DomainIn, request: Request) -> JSONResponse:
    p = runtime(request).provision
    return await _answer(
        p.domains.register(_agent_token(request), body.domain, body.years, body.idempotency_key), 201
    )


@agent.post("/domains/{domain}/renew", summary="Renew a domain (category domains)")
async def renew(domain: str, body: RenewIn, request: Request) -> JSONResponse:
    p = runtime(request).provision
    return await _answer(p.domains.renew(_agent_token(request), domain, body.years, body.idempotency_key))


@agent.delete("/domains/{domain}", summary="Tear a domain down: its records go, the name is released")
async def delete_domain(domain: str, request: Request) -> dict[str, Any]:
    p = runtime(request).provision
    dom = await p.domains.get(domain, await _permit(request, "domains", "delete_domain", domain))
    await p.domains.teardown(dom)
    return {**dom.to_dict(), "deleted": True}


@agent.get("/domains/{domain}/records", summary="A zone's DNS records")
async def records(domain: str, request: Request) -> dict[str, Any]:
    p = runtime(request).provision
    await _wallet_id(request)
    _, dom = await p.domains.zone_of(_agent_token(request), domain)
    return {"object": "list", "data": [r.to_dict() for r in await p.domains.records(dom.name)]}


@agent.post("/domains/{domain}/records", status_code=201, summary="Add a DNS record (category dns)")
async def create_record(domain: str, body: RecordIn, request: Request) -> JSONResponse:
    p = runtime(request).provision
    rec = body.model_dump(exclude={"idempotency_key"})
    return await _answer(
        p.domains.create_record(_agent_token(request), domain, rec, body.idempotency_key), 201
    )


@agent.delete("/domains/{domain}/records/{record_id}", summary="Delete a DNS record")
async def delete_record(domain: str, record_id: str, request: Request) -> dict[str, Any]:
    await _permit(request, "dns", "delete_record", f"{domain}/{record_id}")
    return await runtime(request).provision.domains.delete_record(_agent_token(request), domain, record_id)


@agent.get("/domains/{domain}/zone", summary="The zone as an RFC 1035 zone file", **_ZONE)
async def zone(domain: str, request: Request) -> PlainTextResponse:
    p = runtime(request).provision
    await _wallet_id(request)
    _, dom = await p.domains.zone_of(_agent_token(request), domain)
    return await _zone_file(request, dom.name)


# -------------------------------------------------------------- deployments


@agent.get("/deployments", summary="The agent's wallet's deployments")
async def deployments(request: Request) -> dict[str, Any]:
    deps = await runtime(request).provision.deployments.all(await _wallet_id(request))
    return {"object": "list", "data": deps}


@agent.post(
    "/deployments",
    status_code=201,
    summary="Deploy a version (category hosting): live once healthy, else 422 and the charge voided",
)
async def deploy(body: DeployIn, request: Request) -> JSONResponse:
    p = runtime(request).provision
    raw = bundles.decode(body.bundle)
    work = p.deployments.deploy(
        _agent_token(request),
        body.name,
        kind=body.kind,
        entrypoint=body.entrypoint,
        bundle=raw,
        env=body.env,
        idempotency_key=body.idempotency_key,
    )
    return await _answer(work, 201)


@agent.post(
    "/deployments/{name}/versions",
    status_code=201,
    summary="Deploy a version uploaded as multipart/form-data (curl -F bundle=@app.zip)",
)
async def upload(
    name: str,
    request: Request,
    bundle: UploadFile = File(description="A zip or tar(.gz) archive"),
    kind: str = Form("asgi"),
    entrypoint: str | None = Form(None),
    idempotency_key: str | None = Form(None),
) -> JSONResponse:
    p = runtime(request).provision
    limit = p.cfg.max_bundle_bytes
    raw = await bundle.read(limit + 1)
    work = p.deployments.deploy(
        _agent_token(request),
        name,
        kind=kind,
        entrypoint=entrypoint,
        bundle=raw,
        idempotency_key=idempotency_key,
    )
    return await _answer(work, 201)


@agent.get("/deployments/{name}", summary="A deployment and its versions")
async def deployment(name: str, request: Request) -> dict[str, Any]:
    return await runtime(request).provision.deployments.get(name, await _wallet_id(request))


@agent.post("/deployments/{name}/rollback", summary="Make an earlier version live again (free)")
async def rollback(name: str, body: RollbackIn, request: Request) -> dict[str, Any]:
    await _permit(request, "hosting", "rollback", name)
    return await runtime(request).provision.deployments.rollback(_agent_token(request), name, body.version)


@agent.post(
    "/deployments/{name}/hostnames", summary="Serve a deployment at a hostname of the wallet's domains"
)
async def bind(name: str, body: HostnameIn, request: Request) -> JSONResponse:
    p = runtime(request).provision
    return await _answer(p.deployments.bind(_agent_token(request), name, body.hostname, body.idempotency_key))


@agent.delete("/deployments/{name}", summary="Delete a deployment and stop its worker")
async def delete_deployment(name: str, request: Request) -> dict[str, Any]:
    wallet_id = await _permit(request, "hosting", "delete_deployment", name)
    return await runtime(request).provision.deployments.delete(name, wallet_id)


# ------------------------------------------------------------------ operators


@admin.get("/domains", summary="Every domain bought through the broker")
async def all_domains(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [d.to_dict() for d in await runtime(request).provision.domains.all()]}


@admin.get("/deployments", summary="Every deployment")
async def all_deployments(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await runtime(request).provision.deployments.all()}


@admin.get("/domains/{domain}/zone", summary="A zone file", **_ZONE)
async def admin_zone(domain: str, request: Request) -> PlainTextResponse:
    dom = await runtime(request).provision.domains.get(domain)
    return await _zone_file(request, dom.name)


@admin.post(
    "/overrides", status_code=201, summary="Let a wallet buy a name the trademark guard blocks (audited)"
)
async def override(body: OverrideIn, request: Request) -> dict[str, Any]:
    p = runtime(request).provision
    return await p.domains.override(body.domain, body.wallet_id, body.actor, body.reason)


@admin.get("/overrides", summary="Trademark overrides")
async def overrides(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await runtime(request).provision.domains.overrides()}


@admin.post("/reap", summary="Flag unused resources; with apply, tear them down and report the money saved")
async def reap(body: ReapIn, request: Request) -> dict[str, Any]:
    return await runtime(request).provision.reap(body.apply)
