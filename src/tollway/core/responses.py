"""The one error shape as an HTTP response, for every part that answers HTTP
(the API's routes, the fast path, the x402 paywall)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from tollway.core.errors import TollwayError


def error_response(err: TollwayError) -> JSONResponse:
    """``{"error": {"type", "code", "message", "param"}}`` with the error's status and headers."""
    return JSONResponse(err.to_dict(), status_code=err.status, headers=err.headers or None)
