"""Every FastAPI route reads its JSON body through :mod:`tollway.core.jsonparse`.

FastAPI parses a body with ``json.loads``, which takes lone surrogates and any
depth. :class:`JsonRoute` (the ``route_class`` of every router in
``tollway.api``) parses it first, with the one parser, and hands FastAPI the
result: a bad body is a ``400`` in the one error shape before any handler runs.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from tollway.api.errors import field_code
from tollway.core import jsonparse
from tollway.core.errors import TollwayError
from tollway.core.lazyroute import LazyRoute

_UNSET: Any = object()


class JsonRequest(Request):
    parsed: Any = _UNSET

    async def json(self) -> Any:
        if self.parsed is _UNSET:
            self.parsed = jsonparse.body(await self.body())
        return self.parsed


def is_json(content_type: str | None) -> bool:
    """A body FastAPI would read as JSON (no type at all, or application/json, application/*+json)."""
    if not content_type:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class JsonRoute(LazyRoute):  # built on first use, like every tollway route
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def run(request: Request) -> Response:
            req = JsonRequest(request.scope, request.receive)
            if is_json(req.headers.get("content-type")):
                raw = await req.body()
                if raw:
                    try:
                        req.parsed = jsonparse.body(raw)
                    except TollwayError as e:  # 400, before anything ran
                        raise field_code(e) from None
            return await handler(req)

        return run
