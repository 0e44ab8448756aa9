"""Every error leaves as ``{"error": {"type", "code", "message", "param"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tollway.core.errors import ErrorType, TollwayError
from tollway.core.responses import error_response

log = logging.getLogger("tollway.api")


class ErrorDetail(BaseModel):
    type: str = Field(description="Error family, e.g. invalid_request_error")
    code: str = Field(description="Stable machine-readable code, e.g. insufficient_funds")
    message: str
    param: str | None = Field(description="The request field at fault, if any")


class ErrorBody(BaseModel):
    """The one error shape every endpoint uses."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error shape."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS.get(s, "Error")} for s in statuses}


_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or bad credentials",
    402: "Insufficient funds, or a budget reached (budget_exceeded)",
    403: "Missing scope",
    404: "Not found",
    409: "Conflict (already resolved, idempotency key reused, exists, not configured here)",
    422: "The work failed and nothing was charged (deploy_failed)",
    429: "Rate limit reached (Retry-After and x-ratelimit-* headers)",
    502: "Upstream provider failed",
    503: "Not ready",
}

_HTTP_CODES = {
    404: (ErrorType.NOT_FOUND, "route_not_found", "no such route"),
    405: (ErrorType.INVALID_REQUEST, "method_not_allowed", "method not allowed on this route"),
}

# Fields whose bad values get their own stable code rather than the generic one.
_FIELD_CODES = {
    "amount": ("invalid_amount", "must be a positive integer of micro-USD (1 USD = 1000000)"),
    "timeout": ("invalid_timeout", "must be a positive integer of seconds"),
    "schema": ("invalid_schema", ""),  # the validator's own words
}


def field_code(err: TollwayError) -> TollwayError:
    """An integer past 64 bits in a field with its own code (``amount``) gets that code."""
    field = (err.param or "").rsplit(".", 1)[-1]
    if err.code == "integer_out_of_range" and field in _FIELD_CODES and _FIELD_CODES[field][1]:
        return TollwayError(
            err.type, _FIELD_CODES[field][0], f"{err.param} {_FIELD_CODES[field][1]}", err.param
        )
    return err


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _branch(part: object) -> bool:
    """A union-branch label pydantic puts in error locations ('str', 'list[str]', ...)."""
    return isinstance(part, str) and (part in _TYPE_NAMES or "[" in part or part.startswith("function-"))


def validation_error(exc: RequestValidationError) -> TollwayError:
    e = exc.errors()[0]
    loc = [
        str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header") and not _branch(p)
    ]
    if e.get("type") == "json_invalid":
        return TollwayError(ErrorType.INVALID_REQUEST, "invalid_json", "request body is not valid JSON")
    if e.get("type") == "missing" and not loc:
        return TollwayError(ErrorType.INVALID_REQUEST, "missing_body", "request body is required")
    if e.get("type") in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return TollwayError(ErrorType.INVALID_REQUEST, "invalid_json", "request body must be a JSON object")
    param = ".".join(loc) or None
    field = loc[-1] if loc else ""
    code, why = _FIELD_CODES.get(field, ("invalid_parameter", ""))
    why = why or str(e.get("msg")).removeprefix("Value error, ")
    if e.get("type") == "missing":
        code, why = "missing_parameter", "is required"
    elif e.get("type") == "extra_forbidden":
        code, why = "unknown_parameter", "is not a known parameter"
    msg = f"{param} {why}" if param else why
    return TollwayError(ErrorType.INVALID_REQUEST, code, msg, param)


def install(app: FastAPI) -> None:
    @app.exception_handler(TollwayError)
    async def _tollway(_: Request, exc: TollwayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        etype, code, msg = _HTTP_CODES.get(
            exc.status_code, (ErrorType.INVALID_REQUEST, "http_error", str(exc.detail))
        )
        return error_response(TollwayError(etype, code, msg, status=exc.status_code))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(TollwayError(ErrorType.API, "internal_error", "internal server error"))
