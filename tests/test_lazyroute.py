"""Routes are built on first use (tollway.core.lazyroute): not at import, each
once, the same as FastAPI builds them, and all of them after start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import FastAPIError
from pydantic import BaseModel

from tollway.api.jsonroute import JsonRoute
from tollway.core import lazyroute
from tollway.core.lazyroute import LazyRoute

PROBE = """
import json
from fastapi.routing import APIRoute
from tollway.api import app as app_module, wallets, admin, openai_chat
from tollway.console import pages
routers = (wallets.admin, wallets.agent, admin.router, openai_chat.router, pages.router)
routes = [r for m in routers for r in m.routes]
print(json.dumps([len(routes), sum(r.__dict__.get("_pending") is not None for r in routes),
                  sum(type(r) is APIRoute for r in routes)]))
"""


def test_importing_the_app_builds_no_route() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    total, pending, eager = json.loads(out.stdout.strip().splitlines()[-1])
    assert total > 30 and pending == total and eager == 0


class Body(BaseModel):
    n: int


class Answer(BaseModel):
    doubled: int


def _app() -> tuple[FastAPI, LazyRoute]:
    router = APIRouter(route_class=JsonRoute, prefix="/t")

    @router.post("/double/{k}")
    async def double(k: int, body: Body) -> Answer:
        """Double it."""
        return Answer(doubled=body.n * 2 * k)

    (route,) = router.routes
    assert isinstance(route, LazyRoute)
    app = FastAPI()
    app.include_router(router, responses={418: {"description": "teapot"}})
    return app, route


async def test_a_route_is_built_on_first_use_and_answers_as_fastapi_would() -> None:
    app, route = _app()
    assert "dependant" not in route.__dict__ and route.path == "/t/double/{k}" and route.methods == {"POST"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        ok = await c.post("/t/double/3", json={"n": 7})
        bad = await c.post("/t/double/3", json={"n": "seven"})
        schema = (await c.get("/openapi.json")).json()
    assert ok.status_code == 200 and ok.json() == {"doubled": 42}
    assert bad.status_code == 422
    op = schema["paths"]["/t/double/{k}"]["post"]
    assert op["description"] == "Double it." and "418" in op["responses"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Body")
    assert route.__dict__["_pending"] is None and route.response_model is Answer


async def test_warm_builds_every_route_and_says_so() -> None:
    app, route = _app()
    status: dict[str, str] = {}
    await lazyroute.warm(app, status)
    assert status == {"routes": "built"} and "dependant" in route.__dict__


class NotAModel:
    pass


async def _fine() -> None:
    return None


def test_a_route_that_cannot_be_built_fails_on_every_use() -> None:
    router = APIRouter(route_class=LazyRoute)

    @router.post("/broken")  # pydantic has no schema for the parameter: FastAPI refuses it when it builds
    async def broken(x: NotAModel) -> None:
        return None

    (route,) = router.routes
    for _ in range(2):
        with pytest.raises(FastAPIError):
            route.build()
    good = LazyRoute("/fine", _fine)
    good.build()
    with pytest.raises(AttributeError):
        _ = good.no_such_attribute


async def test_warm_says_when_a_route_cannot_be_built() -> None:
    router = APIRouter(route_class=LazyRoute)

    @router.post("/broken")
    async def broken(x: NotAModel) -> None:
        return None

    app = FastAPI()
    app.include_router(router)
    status: dict[str, str] = {}
    await lazyroute.warm(app, status)
    assert status == {"routes": "failed: FastAPIError"}


async def test_the_server_builds_its_routes_after_start_up(tmp_path: Path) -> None:
    import asyncio
    import gc

    from tollway.api.app import create_app
    from tollway.settings import Settings

    db = {"url": f"sqlite:///{tmp_path / 't.db'}"}
    app = create_app(Settings(database=db, server={"background_delay_seconds": 0.5}))
    async with app.router.lifespan_context(app):
        assert app.state.startup["routes"] == "waiting"  # background work starts after the delay
        frozen = gc.get_freeze_count()  # start-up's objects, frozen out of the cyclic collector
        for _ in range(2000):
            if app.state.startup.get("routes") == "built":
                break
            await asyncio.sleep(0.005)
        assert app.state.startup["routes"] == "built"
        # What building the routes made (~48,000 objects) is frozen too: left in the
        # collector's generations, every full pass walked it (~36 ms a pass).
        assert gc.get_freeze_count() > frozen + 10_000
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            health = (await c.get("/healthz")).json()
    assert health["background"]["routes"] == "built"
