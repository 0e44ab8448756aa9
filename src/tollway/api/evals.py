"""``/admin/evals``: eval runs, version comparisons by replay, and the labelled
examples as JSONL (tollway.evals). Bearer admin token."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from tollway.api.agents import _obj
from tollway.api.auth import require_admin, runtime
from tollway.api.errors import ErrorBody
from tollway.api.jsonroute import JsonRoute
from tollway.core.errors import invalid

MAX_INT = 2**31 - 1  # a version or seed

router = APIRouter(
    route_class=JsonRoute, prefix="/admin/evals", tags=["evals"], dependencies=[Depends(require_admin)]
)


def _agent(b: dict[str, Any]) -> str:
    agent = b.get("agent")
    if not isinstance(agent, str) or not agent:
        raise invalid("invalid_agent", "agent names an agent", "agent")
    return agent


def _int(b: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    v = b.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise invalid(f"invalid_{name}", f"{name} is an integer from 0 to {MAX_INT}", name)
    return v


@router.post("/runs", status_code=201, summary="Sample an agent's sessions and grade them")
async def run(request: Request) -> dict[str, Any]:
    b = await _obj(request, {"agent", "version", "share", "seed"})
    return await runtime(request).evals.run(
        _agent(b), version=_int(b, "version"), share=b.get("share"), seed=_int(b, "seed")
    )


@router.get("/runs", summary="Eval runs and comparisons, newest first")
async def runs(
    request: Request, agent: str | None = Query(None, max_length=64), limit: int = Query(50, ge=1, le=1000)
) -> dict[str, Any]:
    return {"object": "list", "data": await runtime(request).evals.runs(agent, limit=limit)}


@router.get("/runs/{run_id}", summary="One run with its grades")
async def show(run_id: str, request: Request) -> dict[str, Any]:
    return await runtime(request).evals.show(run_id)


@router.post("/compare", status_code=201, summary="Compare two definition versions by replay")
async def compare(request: Request) -> dict[str, Any]:
    b = await _obj(request, {"agent", "version_a", "version_b", "share", "seed"})
    a = _int(b, "version_a", required=True)
    v = _int(b, "version_b", required=True)
    assert a is not None and v is not None
    return await runtime(request).evals.compare(_agent(b), a, v, share=b.get("share"), seed=_int(b, "seed"))


@router.get(
    "/examples",
    response_class=Response,
    responses={
        200: {"content": {"application/jsonl": {}}, "description": 'One {"messages": [...]} per line'},
        **{st: {"model": ErrorBody, "content": {"application/json": {}}} for st in (400, 401)},
    },
    summary="Escalation answers as labelled examples (JSONL, OpenAI fine-tuning chat format)",
)
async def examples(request: Request, agent: str | None = Query(None, max_length=64)) -> Response:
    lines = await runtime(request).evals.examples.export(agent)
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    return Response(body, media_type="application/jsonl")
