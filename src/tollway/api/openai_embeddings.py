"""``POST /v1/embeddings``: OpenAI's embeddings, over the gateway's one embeddings call."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import APIRouter, Depends, Request

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.api.shapes import JSONResponse, tollway
from tollway.billing.plans import AI_EMBEDDINGS
from tollway.core.errors import TollwayError, invalid
from tollway.identity.keys import ApiKey
from tollway.inference.schemas import EmbeddingsRequest

router = APIRouter(route_class=JsonRoute, tags=["inference"])


@router.post("/v1/embeddings", summary="OpenAI-compatible embeddings")
async def embeddings(body: EmbeddingsRequest, request: Request, key: ApiKey = Depends(require_key)) -> Any:
    require_scope(key, "inference")
    rt = runtime(request)
    gw = rt.gateway
    p = await gw.admit(key, "embeddings", request.headers, body.model, False, AI_EMBEDDINGS)
    try:
        cfg = rt.inference.model(body.model, "embeddings")
        if body.dimensions is not None:
            raise invalid("unsupported_parameter", "dimensions is not supported by this model", "dimensions")
        out = await gw.embed(rt.inference, p, cfg, body.texts())
    except TollwayError as e:
        gw.fail(p.entry, e)
        raise
    m = out.metered
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(out.vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": cfg.name,
            "usage": {"prompt_tokens": m.input_tokens, "total_tokens": m.input_tokens},
            "x_tollway": tollway(m),
        },
        headers={**p.headers, **m.headers()},
    )


def _encode(v: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
    return v
