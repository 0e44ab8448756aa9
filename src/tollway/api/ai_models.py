"""``GET /v1/models``: the model registry, with each model's pricing (OpenAI's
shape); ``GET /v1/usage``: the calling customer's usage of it today."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Request

from tollway.api.auth import require_key, require_scope, runtime
from tollway.api.jsonroute import JsonRoute
from tollway.core.money import price_micros
from tollway.identity.keys import ApiKey
from tollway.inference.config import ModelConfig
from tollway.inference.usage import rollup

router = APIRouter(route_class=JsonRoute, tags=["inference"])


def _card(m: ModelConfig, micros_per_1000_neurons: int) -> dict[str, Any]:
    """One model, in OpenAI's shape with tollway's context, limits and rates."""
    return {
        "id": m.name,
        "object": "model",
        "created": 0,
        "owned_by": "tollway",
        "task": m.task,
        "backend": m.backend,
        "context_length": m.n_ctx,
        "max_tokens": m.max_tokens if m.task == "chat" else None,
        "pricing": {
            "neurons_per_m_input_tokens": m.neurons_per_m_input,
            "neurons_per_m_output_tokens": m.neurons_per_m_output,
            "usd_micros_per_1000_neurons": micros_per_1000_neurons,
        },
    }


@router.get("/v1/models", summary="The model registry")
async def models(request: Request, _: ApiKey = Depends(require_key)) -> dict[str, Any]:
    svc = runtime(request).inference
    return {"object": "list", "data": [_card(m, svc.micros_per_1000_neurons) for m in svc.configs.values()]}


@router.get("/v1/models/{model_id:path}", summary="One model of the registry (the SDK's models.retrieve)")
async def model(model_id: str, request: Request, _: ApiKey = Depends(require_key)) -> dict[str, Any]:
    svc = runtime(request).inference
    return _card(svc.model(model_id), svc.micros_per_1000_neurons)  # 404 model_not_found


@router.get("/v1/usage", summary="Today's usage and remaining free allocation for the calling customer")
async def usage(request: Request, key: ApiKey = Depends(require_key)) -> dict[str, Any]:
    require_scope(key, "inference")
    rt = runtime(request)
    today = dt.datetime.fromtimestamp(rt.clock.now_us() / 1e6, dt.UTC).date()
    rows = await rollup(rt.engine, today, key.customer_id)
    s = await rt.billing.standing_of(key.customer_id)
    per_1000 = s.rate
    daily = price_micros(s.plan.daily_neurons * 1000, per_1000)
    remaining = await rt.billing.daily.remaining(key.customer_id, daily)
    prepaid = await rt.ledger.get_account(key.account_id)
    return {
        "object": "usage",
        "customer_id": key.customer_id,
        "date": today.isoformat(),
        "plan": s.plan.lookup_key,
        "allocation": {
            "neurons_per_day": s.plan.daily_neurons,
            "remaining_neurons": remaining * 1000 // per_1000 if per_1000 else 0,
            "remaining": remaining,
            "resets_at": (dt.datetime.combine(today, dt.time(), dt.UTC) + dt.timedelta(days=1)).isoformat(),
        },
        "prepaid": {"balance": prepaid.balance, "available": prepaid.available},
        "today": {
            "requests": sum(r["requests"] for r in rows),
            "neurons": sum(r["mneurons"] for r in rows) / 1000,
            "charged": sum(r["charged"] for r in rows),
            "by_model": [{k: v for k, v in r.items() if k not in ("customer_id", "mneurons")} for r in rows],
        },
    }
