"""``/admin/agents``: definitions (every change a new version), knowledge-base
ingestion, and sessions and usage across customers. Bearer admin token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tollway.agents import definitions, memory
from tollway.agents.spec import AgentSpec
from tollway.api.agents import _obj, agents_of
from tollway.api.auth import require_admin, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.inference.service import Caller

router = APIRouter(
    route_class=JsonRoute, prefix="/admin/agents", tags=["agents"], dependencies=[Depends(require_admin)]
)


@router.get("", summary="Every agent, at its latest version")
async def agent_list(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await agents_of(request).registry.agents()}


@router.put("/{name}", summary="Define an agent, or change it (a new version)")
async def agent_put(name: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    spec = definitions.parse(await _obj(request, set(AgentSpec.model_fields)), name)
    rt.inference.model(spec.model, "chat")  # 404 for a model not in the registry
    return await rt.agents.registry.put(spec)


@router.get("/{name}/versions", summary="Every version of an agent")
async def agent_versions(name: str, request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await agents_of(request).registry.versions(name)}


@router.post("/{name}/documents", summary="Ingest documents into the agent's knowledge base")
async def documents(name: str, request: Request) -> dict[str, Any]:
    rt = runtime(request)
    b = await _obj(request, {"documents"})
    _, spec = await rt.agents.registry.latest(name)
    owner = await rt.customers.get(spec.retrieval.owner) if spec.retrieval.owner else None
    caller = Caller(owner.id, owner.account_id) if owner else Caller("", "")
    return await memory.ingest(rt.vectors, rt.inference, caller, spec, b.get("documents"))


@router.get("/{name}/usage", summary="Usage summed over every session of the agent")
async def usage(name: str, request: Request) -> dict[str, Any]:
    a = agents_of(request)
    await a.registry.latest(name)
    return await a.store.usage(name, None)


@router.get("/{name}/sessions/{session_id}", summary="Any customer's session, with its tool log")
async def session(name: str, session_id: str, request: Request) -> dict[str, Any]:
    a = agents_of(request)
    out = await a.session(None, name, session_id)
    out["tool_calls"] = await a.store.tool_log(name, await a.store.find(name, session_id))
    return out
