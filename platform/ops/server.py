"""The API process's two ports: the public API, and an internal ops port that serves only
the backlog KEDA scales the worker pools on.

The ops port exists so that the backlog does not share the public port's fate: on
Kubernetes it has a Service of its own that also routes to pods that are not ready (the
API's readiness checks PostgreSQL; the backlog lives in Redis), a NetworkPolicy that admits
only KEDA's namespace, and a bearer token that KEDA presents through a TriggerAuthentication
(docs/adr/0014-deployment-image-probes-and-operations.md). Both ports are served by the
same uvicorn processes: each request is routed by the port it arrived on.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac.platform import tracing
from celeriac.platform.api.problems import install_problem_handlers
from celeriac.platform.errors import Unauthorized
from celeriac.platform.ops.routes import DemandCache, metrics_router
from celeriac.platform.settings import Settings, get_settings

_bearer = HTTPBearer(auto_error=False)


def create_ops_app(settings: Settings | None = None) -> FastAPI:
    """The internal app: ``GET /metrics/backlog`` behind ``settings.api.metrics_token``."""
    settings = settings or get_settings()
    token = settings.api.metrics_token
    expected = token.get_secret_value().encode() if token is not None else None

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if expected is None:  # no token configured: nobody may read it
            raise Unauthorized("the backlog is not served without CELERIAC_API__METRICS_TOKEN")
        if credentials is None:
            raise Unauthorized("a bearer token is required", error="invalid_request")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise Unauthorized("the bearer token is not valid")

    app = FastAPI(
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=tracing.fastapi_telemetry(traced=False),
    )
    install_problem_handlers(app)
    app.state.demand_cache = DemandCache(settings.api.backlog_cache_seconds)
    app.include_router(metrics_router, dependencies=[Depends(require_token)])
    return app


class PortRouter:
    """Sends each request to ``ops`` when it arrived on ``ops_port``, else to ``public``;
    lifespan events go to ``public`` (the ops app has no start-up work)."""

    def __init__(self, public: ASGIApp, ops: ASGIApp, ops_port: int) -> None:
        self.public, self.ops, self.ops_port = public, ops, ops_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        on_ops = scope["type"] != "lifespan" and server is not None and server[1] == self.ops_port
        await (self.ops if on_ops else self.public)(scope, receive, send)


def create_asgi_app() -> ASGIApp:
    """uvicorn's factory for ``celeriac api``, run in each of its processes: the public API
    (with this process's observability set up), plus the ops app when
    ``CELERIAC_API__OPS_PORT`` is set."""
    # Imported here: every router, built only in the process that serves them.
    from celeriac.platform.api.observability import create_served_app  # noqa: PLC0415

    settings = get_settings()
    public = create_served_app()  # logging, Sentry and tracing of this process, then the app
    if settings.api.ops_port is None:
        return public
    return PortRouter(public, create_ops_app(settings), settings.api.ops_port)
