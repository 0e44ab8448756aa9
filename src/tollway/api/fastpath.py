"""The hot AI routes without FastAPI's per-request machinery.

On a gateway request, FastAPI's middleware stack, route matching and
dependency solving took about two thirds of the event loop's time
(docs/benchmarks.md). :class:`TollwayApp` answers ``POST /v1/chat/completions``
and ``POST /v1/embeddings`` itself, with the same steps in the same order:

1. read the body; bad JSON is ``400 invalid_json`` (``json_too_deep``: :mod:`tollway.core.jsonparse`);
2. check the API key (``401`` before any validation error, as FastAPI does);
3. validate the body with the route's own pydantic model;
4. call the route's own handler, and send its response.

Errors leave in the one JSON shape through the same converters the FastAPI
handlers use. Every other request, and the OpenAPI schema (the FastAPI routes
still define it), goes through FastAPI unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tollway.api.auth import require_key
from tollway.api.errors import validation_error
from tollway.core import jsonparse
from tollway.core.errors import ErrorType, TollwayError
from tollway.core.responses import error_response
from tollway.identity.keys import ApiKey
from tollway.x402.paywall import Paywall

log = logging.getLogger("tollway.api")

Handler = Callable[[Any, Request, ApiKey], Awaitable[Any]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


class PaidRoute:
    """The route template the metrics and traces label a request by, where no
    FastAPI route matched it: an x402 paid route, a fast route."""

    def __init__(self, path: str) -> None:
        self.path = path


class FastRoute:
    def __init__(self, model: type[BaseModel], handler: Handler, route: APIRoute | PaidRoute) -> None:
        self.model, self.handler, self.route = model, handler, route


class TollwayApp(FastAPI):
    """FastAPI, with :meth:`fast` routes answered before its stack."""

    _fast: dict[str, FastRoute]
    _fast_app: ASGI | None = None

    def fast(self, path: str, model: type[BaseModel], handler: Handler) -> None:
        """Serve ``POST path`` directly. The FastAPI route for it stays, for the schema."""
        route = next((r for r in self.routes if isinstance(r, APIRoute) and r.path == path), None)
        if not hasattr(self, "_fast"):
            self._fast = {}
        # (FastAPI includes routers lazily: the route may not be listed; the label is the path.)
        self._fast[path] = FastRoute(model, handler, route or PaidRoute(path))

    def wrap_fast(self, wrap: Callable[[ASGI], ASGI]) -> None:
        """Put ASGI middleware (the request log's, the metrics) around the fast
        routes too; each call wraps what the calls before built."""
        self._fast_app = wrap(self._fast_app or self._serve_fast)

    paywall: Paywall | None = None
    _paid_app: ASGI | None = None

    def wrap_paid(self, wrap: Callable[[ASGI], ASGI]) -> None:
        """The same for the paid routes (x402): each call wraps what the calls before built."""
        self._paid_app = wrap(self._paid_app or self._serve_paid)

    async def _serve_paid(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.paywall is not None
        await self.paywall(scope, receive, send, scope["x402_rule"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.paywall is not None and scope["type"] == "http" and "x402_payer" not in scope:
            try:
                rule = self.paywall.match(scope)
            except TollwayError as e:  # a path origins could read as another route's
                await error_response(e)(scope, receive, send)
                return
            if rule is not None:  # a paid route (x402), in front of everything else
                scope["x402_rule"] = rule
                scope["route"] = PaidRoute(rule.path)  # what the metrics label it by
                await (self._paid_app or self._serve_paid)(scope, receive, send)
                return
        await self.unpaid(scope, receive, send)

    async def unpaid(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything but the paywall: the fast routes, then FastAPI. (An AI
        route paid over x402 comes back in here, marked ``x402_payer``.)"""
        fast = getattr(self, "_fast", None)
        if fast and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in fast:
            await (self._fast_app or self._serve_fast)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _serve_fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        fr = self._fast[scope["path"]]
        scope["app"] = self
        scope["route"] = fr.route  # what the metrics and traces label the request by
        request = Request(scope, receive)
        try:
            response = await self._handle(fr, request)
        except TollwayError as e:
            response = error_response(e)
        except Exception:
            log.exception("unhandled error")
            response = error_response(TollwayError(ErrorType.API, "internal_error", "internal server error"))
        await response(scope, receive, send)

    @staticmethod
    async def _handle(fr: FastRoute, request: Request) -> Response:
        raw = await request.body()
        obj: Any = None
        if raw:
            obj = jsonparse.body(raw)
        key = await require_key(request)
        if obj is None:
            raise TollwayError(ErrorType.INVALID_REQUEST, "missing_body", "request body is required")
        try:
            body = fr.model.model_validate(obj)
        except ValidationError as e:
            raise validation_error(RequestValidationError(e.errors())) from None
        response: Response = await fr.handler(body, request, key)
        return response
