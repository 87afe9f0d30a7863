"""The FastAPI app factory: `create_app(settings)` wires settings, database, dispatcher and routers."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from audit.db import ensure_schema, get_sessionmaker, is_sqlite, resolve_url
from gateway.admission import Admission
from gateway.auth import KeyCache
from gateway.dashboard.headers import SecuredApp
from gateway.dashboard.rendering import error_page
from gateway.deps import GatewayState
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.openapi import install_openapi, operation_id, refuse_unknown_query
from gateway.routers import health, jobs, score
from gateway.serving import BodyLimit
from gateway.urls import PublicBase
from settings import Settings, get_settings
from workers.dispatch import Dispatcher

log = logging.getLogger(__name__)

# Other areas' routers plug in here: add the module path of a module with a `router` (fastapi.APIRouter).
# Their endpoints authenticate with `gateway.auth.require_role("read" | "submit")`, which returns the tenant.
EXTRA_ROUTER_MODULES: tuple[str, ...] = (
    "gateway.dashboard",
    "gateway.routers.reviews",
    "gateway.routers.images",
)


def create_app(
    settings: Settings | None = None,
    *,
    extra_routers: Sequence[APIRouter] = (),
    start_workers: bool = True,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """Build the gateway. Embedded mode (no broker URL) also runs the in-process worker."""
    settings = settings or get_settings()
    url = resolve_url(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from audit.language import warm_up

        if is_sqlite(url):
            ensure_schema(url)  # the embedded database creates and migrates itself
        await asyncio.to_thread(warm_up)  # keeps the event loop free (uvicorn pings its workers)
        # what start-up made lives as long as the process: keep it out of the collector's full passes
        gc.collect()
        gc.freeze()
        if start_workers:
            app.state.dispatcher.start()
        try:
            yield
        finally:
            app.state.dispatcher.stop()
            await app.state.admission.rates.close()

    app = SecuredApp(  # SecurityHeaders outermost: nosniff everywhere, CSP and frame rules on HTML, 500s too
        title="emoe-gate",
        version="0.1.0",
        summary="Uncertainty-gated text-to-image generation: EMoE gate, policies, audit log.",
        lifespan=lifespan,
        # gateway.openapi: named operation ids, docs served offline, unknown query parameters refused
        generate_unique_id_function=operation_id,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(refuse_unknown_query)],
    )
    from workers import stage_metrics
    from workers.dispatch import make_dispatcher

    sessionmaker = get_sessionmaker(url)
    dispatcher = dispatcher or make_dispatcher(settings)
    # the app's state is one typed object, made here once (routes read it with gateway.deps.get_state)
    app.state = GatewayState(  # type: ignore[assignment]
        settings=settings,
        database_url=url,
        sessionmaker=sessionmaker,
        key_cache=KeyCache(),
        dispatcher=dispatcher,
        stage_metrics=lambda: stage_metrics.snapshots(settings),
        metrics=GatewayMetrics(app),
        admission=Admission(settings, sessionmaker, dispatcher),
    )
    install_error_handlers(app, html_page=error_page)  # a browser on the dashboard gets a page, not JSON
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(PublicBase, public_url=settings.public_url)  # absolute links (EMOE_PUBLIC_URL)

    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(score.router)
    for module in EXTRA_ROUTER_MODULES:
        app.include_router(importlib.import_module(module).router)
    for router in extra_routers:
        app.include_router(router)
    install_openapi(app)
    return app
