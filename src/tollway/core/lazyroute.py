"""Routes whose FastAPI machinery is built on first use, not at import.

FastAPI builds a route's dependency tree, body and response fields (pydantic
``TypeAdapter``s) when ``@router.get(...)`` runs: ~1 ms a route here, a
quarter of what ``tollway serve`` imports (``docs/benchmarks.md``,
"Start-up"). And FastAPI builds it all again for the app when it first routes
a request through an included router (its "effective" routes). A
:class:`LazyRoute` keeps its arguments and answers only what routing and
``include_router`` read before then (path, endpoint, name, methods); the first
read of anything else builds the route as FastAPI would (the same
``APIRoute.__init__``, same arguments), once. :func:`warm` builds every route
of an app in the background after start-up, yielding to the event loop
between routers, so requests do not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import compile_path, get_name

log = logging.getLogger("tollway")


class LazyRoute(APIRoute):
    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        self._pending: tuple[str, Any, dict[str, Any]] | None = (path, endpoint, kwargs)
        self.path, self.endpoint = path, endpoint
        name = kwargs.get("name")
        self.name = get_name(endpoint) if name is None else name
        self.methods = {m.upper() for m in kwargs.get("methods") or ["GET"]}
        self.path_regex, self.path_format, self.param_convertors = compile_path(path)

    def __getattr__(self, attr: str) -> Any:
        # Only for attributes not set yet: once built, reads never come here.
        pending = self.__dict__.get("_pending")
        if pending is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")
        self._pending = None
        path, endpoint, kwargs = pending
        try:
            super().__init__(path, endpoint, **kwargs)
        except BaseException:
            self._pending = pending  # a route that can't be built says so on every read
            raise
        return getattr(self, attr)

    def build(self) -> None:
        """Build now (what the first read of a built attribute does)."""
        _ = self.dependant


async def warm(app: FastAPI, status: dict[str, str]) -> None:
    """Build every route of ``app`` (its own and FastAPI's routing copies),
    a router at a time, letting requests run in between; ``status["routes"]``
    says how far it is, or that a route could not be built (``/healthz`` shows it)."""
    status["routes"] = "building"
    try:
        for context in iter_route_contexts(app.router.routes):
            route = context.original_route
            if isinstance(route, LazyRoute):
                route.build()
            await asyncio.sleep(0)
    except Exception as e:  # a route FastAPI refuses: its requests fail; say which, once
        log.exception("a route could not be built")
        status["routes"] = f"failed: {type(e).__name__}"
        return
    status["routes"] = "built"
