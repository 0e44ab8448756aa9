"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tollway.api.auth import runtime
from tollway.api.jsonroute import JsonRoute
from tollway.core import migrate
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.responses import error_response
from tollway.core.storage import ping
from tollway.observe import metrics

router = APIRouter(route_class=JsonRoute, tags=["system"])


@router.get("/healthz", summary="Liveness and readiness")
async def healthz(request: Request) -> Any:
    rt = runtime(request)
    try:
        async with rt.engine.connect() as conn:
            await ping(conn)
        current = await migrate.current_revision(rt.engine)
    except Exception as e:
        metrics.READY.set(0)
        return error_response(
            TollwayError(ErrorType.API, "database_unreachable", f"database: {e}", status=503)
        )
    head = migrate.head_revision()
    if current != head:
        metrics.READY.set(0)
        return error_response(
            TollwayError(
                ErrorType.API,
                "migrations_pending",
                f"database at revision {current}, code expects {head}: run `tollway migrate`",
                status=503,
            )
        )
    metrics.READY.set(1)
    background = dict(getattr(request.app.state, "startup", {}))  # e.g. demo_ingest: running | done
    return {
        "status": "ok",
        "database": rt.engine.dialect.name,
        "migration": current,
        "background": background,
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
