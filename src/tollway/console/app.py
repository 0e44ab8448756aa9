"""Mount the console on the app: its routes, static files, /docs and /redoc."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tollway.console import customer, docs, pages, signin
from tollway.console.guard import SignInRequired
from tollway.console.service import Console
from tollway.runtime import Runtime

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI, rt: Runtime) -> Console | None:
    """The console's routes on ``app`` (and /docs, /redoc); the Console whose
    ``run()`` the lifespan starts, or None when ``[console] enabled = false``."""
    docs.mount(app)
    cfg = rt.settings.console
    if not cfg.enabled:
        return None
    c = Console(rt, cfg)
    app.state.console = c
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(signin.router)
    app.include_router(customer.router)
    app.include_router(pages.router)
    app.add_exception_handler(SignInRequired, signin.sign_in_required)
    return c
