"""The API's side of observability: request metrics, ``/metrics``, the per-tenant metric
views, tracing of requests, and the factory uvicorn runs in each of its processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac.platform import metrics, tracing
from celeriac.platform.observability import init_process
from celeriac.platform.ops.tenant_metrics import admin_router, tenant_router
from celeriac.platform.settings import Settings, get_settings

UNMATCHED = "unmatched"
router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def prometheus_metrics() -> Response:
    """This API deployment's process metrics in Prometheus text (every uvicorn worker's,
    in multiprocess mode). Unauthenticated like ``/metrics/backlog``: it is scraped inside
    the cluster and no label carries a tenant."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


class HttpMetrics:
    """Counts and times every request by route template, method and status class (plain
    ASGI: BaseHTTPMiddleware costs a task per request). The template, never the path, so
    ids in URLs make no series."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            metrics.http_request_ended(
                template, scope["method"], status, time.perf_counter() - started
            )


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Routes (``/metrics``, ``/metrics/tenants``, ``/v1/metrics``) and the request metrics
    middleware (outermost, so refusals are counted too). Requests are traced by FastAPI
    itself (``tracing.fastapi_telemetry``, given to the app when it is built)."""
    app.include_router(admin_router)
    app.include_router(tenant_router)
    if settings.observability.metrics_enabled:
        app.include_router(router)
        app.add_middleware(HttpMetrics)


def create_served_app() -> FastAPI:
    """What uvicorn runs in each of its processes (``--workers N`` children included):
    logging, Sentry and tracing are set up here, in the process that serves, then the app
    is built. Tests build :func:`create_app` directly and keep their own logging."""
    # Imported here: import cycle (api.app imports this module).
    from celeriac.platform.api.app import create_app  # noqa: PLC0415

    settings = get_settings()
    init_process(settings, "api")
    app = create_app(settings)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        async with inner(served) as state:
            yield state
        tracing.flush()
        metrics.process_exited()  # this process's live gauges leave the sum

    app.router.lifespan_context = lifespan
    return app
