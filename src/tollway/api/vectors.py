"""Vector indexes over HTTP: Vectorize's operations under ``/v1/vectorize/indexes``,
for the calling customer's indexes (scopes ``vectors:read`` / ``vectors:write``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.billing.plans import AI_EMBEDDINGS, REQUESTS
from tollway.core import jsonparse
from tollway.core.errors import invalid
from tollway.identity.keys import ApiKey
from tollway.inference.service import Caller
from tollway.vectors.service import Vectors

router = APIRouter(route_class=JsonRoute, prefix="/v1/vectorize/indexes", tags=["vectors"])

_QUERY_FIELDS = {
    "vector",
    "id",
    "topK",
    "returnValues",
    "returnMetadata",
    "namespace",
    "filter",
    "rerank",
    "lambda",
}


def _vectors(request: Request) -> Vectors:
    v: Vectors = runtime(request).vectors
    return v


async def _body(request: Request) -> Any:
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    if "ndjson" in ctype:  # Vectorize's wire format for insert / upsert
        return {"vectors": [jsonparse.body(line, "body") for line in raw.splitlines() if line.strip()]}
    return jsonparse.body(raw, "body") if raw else {}


async def _obj(request: Request, allowed: set[str]) -> dict[str, Any]:
    body = await _body(request)
    if not isinstance(body, dict):
        raise invalid("invalid_body", "the body is a JSON object", "body")
    extra = sorted(set(body) - allowed)
    if extra:
        raise invalid("unknown_field", f"unknown field {extra[0]!r}", extra[0])
    return body


def _read(key: ApiKey) -> str:
    require_scope(key, "vectors:read")
    return key.customer_id


def _write(key: ApiKey) -> str:
    require_scope(key, "vectors:write")
    return key.customer_id


@router.post("", summary="Create an index")
async def create(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, {"name", "dimensions", "metric", "description", "config"})
    cfg: dict[str, Any] = b["config"] if isinstance(b.get("config"), dict) else {}
    info = await _vectors(request).create_index(
        _write(key),
        b.get("name"),
        b.get("dimensions", cfg.get("dimensions")),
        b.get("metric", cfg.get("metric")),
        b.get("description", ""),
    )
    return info.to_dict()


@router.get("", summary="The calling customer's indexes")
async def index_list(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    infos = await _vectors(request).list_indexes(_read(key))
    return {"object": "list", "data": [i.to_dict() for i in infos]}


@router.get("/{name}", summary="An index's config")
async def get(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    return (await _vectors(request).index(_read(key), name)).to_dict()


@router.get("/{name}/info", summary="An index's dimensions and vector count")
async def info(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    return await _vectors(request).describe(_read(key), name)


@router.delete("/{name}", summary="Delete an index and its vectors")
async def delete(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    await _vectors(request).delete_index(_write(key), name)
    return {"deleted": True, "name": name}


@router.post("/{name}/insert", summary="Insert vectors (ids that exist are skipped)")
async def insert(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, {"vectors"})
    return await _vectors(request).insert(_write(key), name, b.get("vectors"))


@router.post("/{name}/upsert", summary="Insert or replace vectors")
async def upsert(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, {"vectors"})
    return await _vectors(request).upsert(_write(key), name, b.get("vectors"))


def _opts(b: dict[str, Any]) -> dict[str, Any]:
    o = {k: v for k, v in b.items() if k not in ("vector", "id", "lambda", "text", "model")}
    if "lambda" in b:
        o["mmr_lambda"] = b["lambda"]
    return o


@router.post("/{name}/query", summary="The nearest vectors to a vector, or to a stored vector's id")
async def query(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, _QUERY_FIELDS)
    return await _vectors(request).query(_read(key), name, b.get("vector"), id=b.get("id"), **_opts(b))


@router.post("/{name}/get_by_ids", summary="Vectors by id")
async def get_by_ids(name: str, request: Request, key: ApiKey = Depends(require_key)) -> list[dict[str, Any]]:
    b = await _obj(request, {"ids"})
    return await _vectors(request).get_by_ids(_read(key), name, b.get("ids"))


@router.post("/{name}/delete_by_ids", summary="Delete vectors by id")
async def delete_by_ids(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, {"ids"})
    return await _vectors(request).delete_by_ids(_write(key), name, b.get("ids"))


async def _caller(request: Request, key: ApiKey) -> Caller:
    """Who pays for the embeddings, held to the plan like /v1/embeddings: its
    features (ai.embeddings) and its request quotas, before any money moves."""
    require_scope(key, "inference")
    if key.prepaid:
        return Caller(key.customer_id, key.account_id, key.id, prepaid=True)
    b = runtime(request).billing
    s = b.standing(key.customer_id, key.billing)
    caps = (*await b.require(s, AI_EMBEDDINGS), *await b.require(s, REQUESTS))
    return Caller(key.customer_id, key.account_id, key.id, caps, False, s)


@router.post("/{name}/upsert_text", summary="Embed texts and upsert them (charged as embeddings)")
async def upsert_text(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, {"vectors", "model"})
    _write(key)
    return await _vectors(request).upsert_text(
        await _caller(request, key), name, b.get("vectors"), model=b.get("model")
    )


@router.post("/{name}/query_text", summary="Embed a text and query with it (charged as embeddings)")
async def query_text(name: str, request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    b = await _obj(request, (_QUERY_FIELDS - {"vector", "id"}) | {"text", "model"})
    _read(key)
    return await _vectors(request).query_text(
        await _caller(request, key), name, b.get("text"), model=b.get("model"), **_opts(b)
    )
