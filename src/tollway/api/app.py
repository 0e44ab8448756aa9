"""ASGI app assembly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tollway import __version__
from tollway.agents import demo as agents_demo
from tollway.api import (
    admin,
    agents,
    agents_admin,
    ai_models,
    anthropic_messages,
    billing,
    demo,
    errors,
    gateway_admin,
    openai_chat,
    openai_embeddings,
    openai_responses,
    provision,
    system,
    telemetry,
    v1,
    vectors,
    wallet_owner,
    wallets,
    workers_ai,
    x402,
    x402_admin,
    x402_agent,
)
from tollway.api import alerts as alerts_api
from tollway.api import evals as evals_api
from tollway.api import stripe as stripe_api
from tollway.api.fastpath import TollwayApp
from tollway.api.quote import quote as ai_quote
from tollway.api.requestlog import LogEveryRequest
from tollway.console.app import mount as mount_console
from tollway.core import lazyroute
from tollway.inference.responses_format import ResponsesRequest
from tollway.inference.schemas import ChatRequest, EmbeddingsRequest
from tollway.observe import tracing
from tollway.runtime import Runtime
from tollway.settings import Settings

log = logging.getLogger("tollway")


_BODY_METHODS = {"POST", "PUT", "PATCH"}
_FORM = b"application/x-www-form-urlencoded"


def _json_by_default(scope: Any) -> None:
    """Every body tollway accepts is JSON: read one sent with no content type, or
    with curl -d's form type, as JSON rather than refusing it (the scope's headers
    replaced in place: the outer layers see the route an inner one matches)."""
    for k, v in scope["headers"]:
        if k == b"content-type" and v != _FORM:
            return
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    scope["headers"] = [*headers, (b"content-type", b"application/json")]


class JsonBodies:
    """FastAPI's routes read a body sent without a content type, or with curl -d's
    form type, as JSON (pure ASGI; the fast routes parse JSON whatever the type)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            _json_by_default(scope)
        await self.app(scope, receive, send)


async def _after(delay: float, work: Coroutine[Any, Any, Any]) -> None:
    try:
        await asyncio.sleep(delay)
    except BaseException:
        work.close()  # cancelled before it started
        raise
    await work


# Net allocations between two collections of the cyclic collector's youngest
# generation (CPython's default: 700). See the lifespan below.
GC_YOUNG_THRESHOLD = 10_000


async def _warm(app: FastAPI) -> None:
    """Build the routes (:func:`lazyroute.warm`), then freeze what they made out
    of the cyclic collector, as start-up's objects are: they live as long as the
    process, and left in its generations every full pass walked them again."""
    await lazyroute.warm(app, app.state.startup)
    gc.freeze()


async def _demo_ingest(rt: Runtime, startup: dict[str, str]) -> None:
    """The demo agent's knowledge base (it loads the embeddings model): after start-up."""
    startup["demo_ingest"] = "running"
    try:
        await agents_demo.seed(rt)
        startup["demo_ingest"] = "done"
    except Exception as e:  # the demo's knowledge base is not worth failing the server for
        log.exception("the demo agent's knowledge base could not be ingested")
        startup["demo_ingest"] = f"failed: {type(e).__name__}"


def create_app(settings: Settings | None = None, *, rt: Runtime | None = None) -> FastAPI:
    if rt is None:
        rt = Runtime.build(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if rt.settings.database.migrate_on_start:
            before, after = await rt.migrate()
            if before != after:
                log.info("database migrated %s -> %s", before, after)
        delay = rt.settings.server.background_delay_seconds

        def later(work: Coroutine[Any, Any, Any]) -> asyncio.Task[None]:
            """Background work, started ``[server] background_delay_seconds`` after
            start-up: the first requests do not queue behind its first passes."""
            return asyncio.create_task(_after(delay, work))

        sweeper = later(rt.ledger.run_expiry(rt.settings.ledger.expiry_interval_seconds))
        # Not later: long calls' progress is checkpointed from the first request on.
        recovery = [asyncio.create_task(rt.recovery.run())] if rt.settings.ledger.progress_seconds else []
        await rt.paywall.refresh()
        rules = later(rt.paywall.watch())
        billing_tick = later(rt.billing.run(rt.settings.billing.tick_seconds))
        wallet_sweep = later(rt.authorizer.run(rt.settings.wallets.sweep_seconds))
        autopilot = later(rt.authorizer.autopilot.run(rt.settings.wallets.autopilot_seconds))
        await rt.provision.start()  # the deployments' edge, idle workers, the reaper
        schedules = later(rt.scheduler.run(rt.settings.schedules.tick_seconds))
        agents_purge = later(rt.agents.run_purge(rt.settings.agents.purge_seconds))
        alerting = [
            later(rt.alert_checks.run(rt.settings.alerts.check_seconds)),
            later(rt.alert_delivery.run(rt.settings.alerts.fan_out_seconds)),
            later(rt.evals.examples.run(rt.settings.evals.harvest_seconds)),
        ]
        await rt.evals_weekly.ensure()
        # Work that loads models runs after start-up, reported by /healthz (ready at once).
        background = []
        if rt.settings.agents.demo:
            app.state.startup["demo_ingest"] = "waiting"
            background.append(later(_demo_ingest(rt, app.state.startup)))
        # The routes FastAPI has not built yet (tollway.core.lazyroute), between requests.
        app.state.startup["routes"] = "waiting"
        background.append(later(_warm(app)))
        if console is not None:  # the console's rollups (tollway.console.rollups)
            background.append(later(console.run()))
        if rt.stripe is not None:  # usage to Stripe's meter (stopped by rt.close)
            rt.stripe.pusher().start()
        # What start-up made (modules, config, models' Python objects) lives as
        # long as the process: keep it out of the cyclic collector's full passes.
        # (No gc.collect() first: a full pass costs ~150 ms of start-up to free
        # a little start-up garbage, which the freeze then keeps.)
        gc.freeze()
        # The youngest generation is collected every GC_YOUNG_THRESHOLD net
        # allocations, not CPython's 700: under load (64 requests in flight) a
        # collection every 700 walked the requests' live objects every ~10
        # requests and took 6.6% of the event loop's time; every 10,000, 0.6%
        # (docs/benchmarks.md, "AI gateway overhead", tenth session).
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        gc.enable()  # `tollway serve` starts with it off (tollway.cli.run)
        try:
            yield
        finally:
            for task in (
                sweeper,
                rules,
                billing_tick,
                wallet_sweep,
                autopilot,
                agents_purge,
                schedules,
                *recovery,
                *alerting,
                *background,
            ):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await rt.close()
            tracing.force_flush()  # the spans still batched

    app = TollwayApp(
        title="tollway",
        version=__version__,
        summary="Serve AI, sell it, and let agents spend safely.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: tollway.console.docs, assets served locally
        redoc_url=None,
    )
    app.state.runtime = rt
    rt.provision.ai_binding.serve(app)  # deployments' AI binding calls this app in-process
    app.state.startup = {}  # what start-up still does in the background, by name: /healthz shows it
    errors.install(app)
    app.include_router(system.router, responses=errors.error_responses(503))
    app.include_router(admin.router, responses=errors.error_responses(400, 401, 402, 404, 409))
    app.include_router(v1.router, responses=errors.error_responses(401, 403, 404))
    for shape in (
        ai_models,
        openai_chat,
        openai_responses,
        openai_embeddings,
        workers_ai,
    ):  # the AI routes: one module a shape
        app.include_router(
            shape.router, responses=errors.error_responses(400, 401, 402, 403, 404, 429, 502, 503)
        )
    app.include_router(anthropic_messages.router)  # its errors are in Anthropic's shape
    app.include_router(gateway_admin.router, responses=errors.error_responses(400, 401, 404))
    app.include_router(x402.router, responses=errors.error_responses(400))
    app.include_router(x402_admin.router, responses=errors.error_responses(400, 401))
    app.include_router(x402_agent.router, responses=errors.error_responses(400, 401, 403, 404, 409))
    app.include_router(billing.router, responses=errors.error_responses(400, 401, 402, 403, 404, 409))
    app.include_router(billing.admin, responses=errors.error_responses(400, 401, 402, 404, 409))
    # Before wallets.admin: /admin/wallets/budget-requests is not a wallet id.
    app.include_router(wallet_owner.admin, responses=errors.error_responses(400, 401, 404, 409))
    app.include_router(wallet_owner.agent, responses=errors.error_responses(400, 401, 403, 404, 409))
    app.include_router(wallets.admin, responses=errors.error_responses(400, 401, 404, 409))
    app.include_router(wallets.agent, responses=errors.error_responses(400, 401, 402, 404, 409))
    app.include_router(wallets.broker, responses=errors.error_responses(400, 401, 402, 409, 502, 504))
    app.include_router(provision.agent, responses=errors.error_responses(400, 401, 402, 403, 404, 409, 422))
    app.include_router(provision.admin, responses=errors.error_responses(400, 401, 404, 409))
    app.include_router(vectors.router, responses=errors.error_responses(400, 401, 402, 403, 409))
    app.include_router(stripe_api.router, responses=errors.error_responses(400, 401, 403, 409, 502))
    app.include_router(
        agents.router, responses=errors.error_responses(400, 401, 402, 403, 404, 409, 502, 503)
    )
    app.include_router(agents.escalations, responses=errors.error_responses(400, 401, 404, 409))
    app.include_router(agents_admin.router, responses=errors.error_responses(400, 401, 404))
    app.include_router(alerts_api.router, responses=errors.error_responses(400, 401, 404, 409))
    app.include_router(evals_api.router, responses=errors.error_responses(400, 401, 402, 404, 502, 504))
    console = mount_console(app, rt)  # /console, /docs, /redoc
    if rt.settings.agents.demo:
        app.include_router(demo.router, responses=errors.error_responses(404))
    app.add_middleware(JsonBodies)
    app.add_middleware(LogEveryRequest, log=rt.gateway.log)
    access = telemetry.configure(rt.settings.telemetry)  # traces on if configured
    app.add_middleware(telemetry.TelemetryMiddleware, access_log=access)  # outermost
    # The hot AI routes skip FastAPI's per-request machinery (tollway.api.fastpath).
    app.fast("/v1/chat/completions", ChatRequest, openai_chat.chat_completions)
    app.fast("/v1/embeddings", EmbeddingsRequest, openai_embeddings.embeddings)
    app.fast("/v1/responses", ResponsesRequest, openai_responses.create_response)
    app.wrap_fast(lambda inner: LogEveryRequest(inner, rt.gateway.log))
    app.wrap_fast(lambda inner: telemetry.TelemetryMiddleware(inner, access))
    # Paid routes (x402) answer before anything else.
    app.paywall = rt.paywall
    app.wrap_paid(lambda inner: telemetry.TelemetryMiddleware(inner, access))
    rt.paywall.inner = app.unpaid  # origin = "self": AI routes paid over x402

    async def quote(path: str, body: Any) -> int:
        return await ai_quote(rt, path, body)

    rt.paywall.quote = quote

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
